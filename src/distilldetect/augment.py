"""Augmentations for robust distillation (``ModelDistillation.fit(augment_fn=...)``).

:func:`augmix` is an AugMix-style augmentation (Hendrycks et al., ICLR 2020) for image
batches in numpy: several chains of random operations, mixed with Dirichlet weights, then
mixed with the original image. Its operations are deliberately *disjoint* from the CIFAR-10-C
corruptions (no noise, blur, weather, contrast, brightness, pixelation or JPEG), as the
benchmark's rules ask of anything trained before evaluation on it: affine moves (translate,
rotate, shear), flips, and intensity re-mappings (autocontrast, equalise, posterise, solarise)
computed per image, so they work on inputs of any range (e.g. images scaled by instance).

Everything is vectorised over the batch and draws from the ``numpy.random.Generator`` given.

:func:`adversarial_augment` is the adversarial counterpart (a robust student, TRADES-style):
it perturbs a fraction of each batch within an L-inf ball, in the direction that moves the
student's own output most, so that the student learns to keep the teacher's clean answer there.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from .base import check_array, check_positive_int, check_seed, describe

__all__ = ["OPERATIONS", "adversarial_augment", "augmix", "make_augment_fn"]


def _as_nhwc(x: np.ndarray) -> tuple[np.ndarray, bool]:
    if x.ndim == 3:
        return x[..., None], True
    if x.ndim == 4:
        return x, False
    raise ValueError(f"x must be images (n, h, w) or (n, h, w, c), got shape {x.shape}")


def _affine(x: np.ndarray, matrices: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Per-image affine warp about the centre (bilinear, edge values outside), vectorised."""
    n, h, w, c = x.shape
    ii, jj = np.meshgrid(
        np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
    )
    ci, cj = (h - 1) / 2.0, (w - 1) / 2.0
    di, dj = ii - ci, jj - cj
    m = matrices.astype(np.float32)
    t = shifts.astype(np.float32)
    src_i = m[:, 0, 0, None, None] * di + m[:, 0, 1, None, None] * dj + (ci + t[:, 0, None, None])
    src_j = m[:, 1, 0, None, None] * di + m[:, 1, 1, None, None] * dj + (cj + t[:, 1, None, None])
    src_i = np.clip(src_i, 0, h - 1)
    src_j = np.clip(src_j, 0, w - 1)
    i0 = (
        np.minimum(src_i.astype(np.int64), h - 2) if h > 1 else np.zeros_like(src_i, dtype=np.int64)
    )
    j0 = (
        np.minimum(src_j.astype(np.int64), w - 2) if w > 1 else np.zeros_like(src_j, dtype=np.int64)
    )
    fi = (src_i - i0)[..., None]
    fj = (src_j - j0)[..., None]
    i1 = np.minimum(i0 + 1, h - 1)
    j1 = np.minimum(j0 + 1, w - 1)
    # gather through flat row indices (one np.take per corner: much faster than 3-D indexing)
    flat = x.reshape(n * h * w, c)
    base = (np.arange(n, dtype=np.int64) * (h * w))[:, None, None]
    r0, r1 = base + i0 * w, base + i1 * w
    top = np.take(flat, r0 + j0, axis=0) * (1 - fj) + np.take(flat, r0 + j1, axis=0) * fj
    bottom = np.take(flat, r1 + j0, axis=0) * (1 - fj) + np.take(flat, r1 + j1, axis=0) * fj
    return (top * (1 - fi) + bottom * fi).astype(x.dtype, copy=False)


def _translate(x: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    n, h, w, _ = x.shape
    shifts = rng.uniform(-1, 1, size=(n, 2)) * level * np.array([h, w]) / 3.0
    return _affine(x, np.broadcast_to(np.eye(2), (n, 2, 2)), shifts)


def _rotate(x: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    n = len(x)
    angle = np.deg2rad(rng.uniform(-1, 1, size=n) * 30.0 * level)
    cos, sin = np.cos(angle), np.sin(angle)
    m = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1)
    return _affine(x, m, np.zeros((n, 2)))


def _shear(x: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    n = len(x)
    s = rng.uniform(-1, 1, size=n) * 0.3 * level
    horizontal = rng.random(n) < 0.5
    m = np.broadcast_to(np.eye(2), (n, 2, 2)).copy()
    m[horizontal, 1, 0] = s[horizontal]
    m[~horizontal, 0, 1] = s[~horizontal]
    return _affine(x, m, np.zeros((n, 2)))


def _flip(x: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    out = x.copy()
    flip = rng.random(len(x)) < 0.5
    out[flip] = x[flip, :, ::-1]
    return out


def _per_image_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    return lo, np.maximum(hi - lo, 1e-12)


def _autocontrast(x: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    # stretch the 2nd-98th percentile range of each image to its full range
    n = len(x)
    lo, span = _per_image_range(x)
    flat = x.reshape(n, -1)
    k_lo, k_hi = int(0.02 * (flat.shape[1] - 1)), int(0.98 * (flat.shape[1] - 1))
    part = np.partition(flat, [k_lo, k_hi], axis=1)
    q_lo = part[:, k_lo].reshape(n, 1, 1, 1)
    q_hi = part[:, k_hi].reshape(n, 1, 1, 1)
    stretched = (x - q_lo) / np.maximum(q_hi - q_lo, 1e-12) * span + lo
    return np.clip(stretched, lo, lo + span).astype(x.dtype, copy=False)


def _equalize(x: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    # per-image histogram equalisation: values replaced by their rank, kept in the image's range
    n = len(x)
    lo, span = _per_image_range(x)
    flat = x.reshape(n, -1)
    order = flat.argsort(axis=1)
    ranks = np.empty(flat.shape, dtype=np.float32)
    ranks[np.arange(n)[:, None], order] = np.arange(flat.shape[1], dtype=np.float32) / max(
        flat.shape[1] - 1, 1
    )
    return (ranks.reshape(x.shape) * span + lo).astype(x.dtype)


def _posterize(x: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    lo, span = _per_image_range(x)
    bits = rng.integers(max(1, int(round(4 - 3 * level))), 5, size=(len(x), 1, 1, 1))
    levels = 2.0**bits
    return (np.floor((x - lo) / span * (levels - 1) + 0.5) / (levels - 1) * span + lo).astype(
        x.dtype
    )


def _solarize(x: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    lo, span = _per_image_range(x)
    threshold = lo + span * (1.0 - rng.uniform(0, level, size=(len(x), 1, 1, 1)))
    return np.where(x >= threshold, lo + span - (x - lo), x).astype(x.dtype)


OPERATIONS: dict[str, Callable[[np.ndarray, np.random.Generator, float], np.ndarray]] = {
    "translate": _translate,
    "rotate": _rotate,
    "shear": _shear,
    "flip": _flip,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "posterize": _posterize,
    "solarize": _solarize,
}


def augmix(
    x: np.ndarray,
    rng: np.random.Generator,
    width: int = 3,
    depth: tuple[int, int] = (1, 3),
    level: float = 0.5,
    alpha: float = 1.0,
    operations: tuple[str, ...] | None = None,
) -> np.ndarray:
    """AugMix-style augmentation of an image batch.

    Parameters
    ----------
    x
        Images ``(n, h, w)`` or ``(n, h, w, c)``, any real range.
    rng
        Random generator.
    width
        Number of augmentation chains mixed per image.
    depth
        Inclusive range of the number of operations per chain.
    level
        Strength of the operations in ``(0, 1]``.
    alpha
        Concentration of the Dirichlet (chain weights) and Beta (mix with the original) draws.
    operations
        Names from :data:`OPERATIONS` (default: all).

    Returns
    -------
    numpy.ndarray
        Augmented batch, same shape and dtype.

    Examples
    --------
    >>> x = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    >>> augmix(x, np.random.default_rng(1)).shape
    (4, 8, 8)
    """
    x = check_array(x, "x", min_ndim=3)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {describe(rng)}")
    names = tuple(OPERATIONS) if operations is None else tuple(operations)
    unknown = [o for o in names if o not in OPERATIONS]
    if unknown or not names:
        raise ValueError(f"operations must be names from {list(OPERATIONS)}, got {list(names)}")
    if not 0 < level <= 1:
        raise ValueError(f"level must be in (0, 1], got {level}")
    x4, squeezed = _as_nhwc(x)
    x4 = x4.astype(np.float32 if x.dtype != np.float64 else np.float64, copy=False)
    n = len(x4)
    weights = rng.dirichlet([alpha] * width, size=n).astype(x4.dtype)
    mix = np.zeros_like(x4)
    for k in range(width):
        chain = x4
        for _ in range(int(rng.integers(depth[0], depth[1] + 1))):
            chain = OPERATIONS[names[int(rng.integers(len(names)))]](chain, rng, level)
        mix += weights[:, k, None, None, None] * chain
    m = rng.beta(alpha, alpha, size=(n, 1, 1, 1)).astype(x4.dtype)
    out = m * x4 + (1 - m) * mix
    out = out[..., 0] if squeezed else out
    return out.astype(x.dtype, copy=False)


def make_augment_fn(
    name: str = "augmix", **kwargs: object
) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """An ``augment_fn(x, rng)`` for :meth:`ModelDistillation.fit`.

    Examples
    --------
    >>> fn = make_augment_fn("augmix", level=0.3)
    >>> fn(np.zeros((2, 8, 8), np.float32), np.random.default_rng(0)).shape
    (2, 8, 8)
    """
    if name != "augmix":
        raise ValueError(f"name must be 'augmix', got {name!r}")

    def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return augmix(x, rng, **kwargs)  # type: ignore[arg-type]

    return augment


def _check_unit_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1], got {describe(value)}")
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def _check_budget(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number > 0, got {describe(value)}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def adversarial_augment(
    student: Any,
    eps: float = 0.3,
    steps: int = 5,
    p_adv: float = 0.5,
    *,
    step_size: float | None = None,
    clip: tuple[float, float] | None = None,
    seed: int | None = None,
) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """An ``augment_fn(x, rng)`` that trains a robust student (adversarial distillation).

    Each row of a batch is, with probability ``p_adv``, moved to ``x' = x + delta`` with
    ``|delta| <= eps`` (L-inf) chosen by PGD (``steps`` signed-gradient steps from a random
    start in the ball) to maximise ``KL(student(x) || student(x'))``; the other rows stay clean.
    Given to :meth:`ModelDistillation.fit`, whose teacher targets stay those of the clean
    ``x``, the student learns to give the teacher's clean answer anywhere in the ball: an
    attacker who moves the teacher there does not move the student along, so the distillation
    score rises. The clean rows keep the scores of clean inputs low. The student runs in eval
    mode during the attack; its modes and parameter flags are restored after every batch.

    Parameters
    ----------
    student
        The distilled model being trained (a ``torch.nn.Module`` or a tf.keras model returning
        probabilities); the attack uses its current weights at every batch.
    eps
        L-inf budget in the model's input space (> 0).
    steps
        PGD steps (>= 1).
    p_adv
        Fraction of each batch perturbed, in (0, 1].
    step_size
        Size of each step; None for ``2.5 * eps / steps``.
    clip
        Optional ``(low, high)`` bounds of valid inputs.
    seed
        None to draw from the ``rng`` that ``fit`` passes (derived from ``fit``'s seed), or
        a seed for this augmenter's own generator (then ``rng`` is not used).

    Returns
    -------
    callable
        ``augment_fn(x, rng) -> x_aug``, same shape and dtype as ``x``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(-1))
    >>> fn = adversarial_augment(net, eps=0.1, steps=3, p_adv=1.0)
    >>> x = np.zeros((6, 4), np.float32)
    >>> out = fn(x, np.random.default_rng(0))
    >>> out.shape, out.dtype, bool(np.abs(out - x).max() <= 0.1 + 1e-6)
    ((6, 4), dtype('float32'), True)
    """
    from .attacks import _check_clip, _gradient_backend

    backend = _gradient_backend(student, "adversarial_augment", "student")
    eps = _check_budget(eps, "eps")
    steps = check_positive_int(steps, "steps")
    p_adv = _check_unit_fraction(p_adv, "p_adv")
    step_size = 2.5 * eps / steps if step_size is None else _check_budget(step_size, "step_size")
    clip = _check_clip(clip)
    seed = check_seed(seed)
    own = None if seed is None else np.random.default_rng(seed)

    def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = check_array(x, "x", min_ndim=2)
        if x.dtype.kind != "f":
            raise TypeError(f"x must be a floating array (the model's input), got dtype {x.dtype}")
        draw = own if own is not None else rng
        rows = np.flatnonzero(draw.random(len(x)) < p_adv)  # which rows move, and from where
        start = draw.uniform(-eps, eps, size=(len(rows),) + x.shape[1:])
        out = np.array(x, copy=True)
        if len(rows):
            adv = backend.robust.adversarial_perturb(
                student, x[rows], start, eps, steps, step_size, clip
            )
            out[rows] = adv.astype(x.dtype, copy=False)
        return out

    return augment
