"""Adversarial attacks on a classifier, numpy in and numpy out, including the adaptive attack.

* Gradient attacks on a differentiable teacher (a ``torch.nn.Module`` or a tf.keras model;
  gradients through :mod:`distilldetect.backends.torch.attacks` or
  :mod:`distilldetect.backends.tensorflow.attacks`): :func:`fgsm`, :func:`pgd` (L-inf and L2,
  random start), :func:`carlini_wagner_l2`, and :func:`adaptive_pgd`, the attacker who knows the
  detector: it maximises ``CE(teacher(x'), y) - lam * score(x')`` so that the teacher is fooled
  while the distilled student(s) keep agreeing with it.
* A query-only attack for any callable teacher (numpy batch -> probabilities): :func:`simba`
  (SimBA, Guo et al. 2019, pixel basis, written here); and :func:`square`, the Square attack of
  the Adversarial Robustness Toolbox (the ``[attacks]`` extra).

Every attack takes a batch ``x`` (float, the models' layout), integer labels ``y`` and a budget
``eps`` (L-inf unless ``norm='l2'``), works in batches with a progress bar (off with
``verbose=False``), and returns the adversarial batch (same shape and dtype). ``clip=(lo, hi)``
keeps pixels in a range (None: no range, e.g. for inputs scaled by instance).

Examples
--------
>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1))
>>> x = np.zeros((2, 4), dtype=np.float32)
>>> x_adv = fgsm(net, x, np.array([0, 1]), eps=0.1, verbose=False)
>>> round(float(np.abs(x_adv - x).max()), 6)
0.1
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ..backends import framework_of, get_backend
from ..base import (
    check_batch_size,
    check_bool,
    check_positive_float,
    check_positive_int,
    check_seed,
    describe,
)
from ..losses import LOSS_TYPES
from ._checks import _check_xy, check_eps
from .blackbox import simba, square

__all__ = [
    "ATTACKS",
    "GRADIENT_ATTACKS",
    "TF_GRADIENT_ATTACKS",
    "QUERY_ATTACKS",
    "NORMS",
    "fgsm",
    "pgd",
    "carlini_wagner_l2",
    "simba",
    "square",
    "adaptive_pgd",
    "check_attack_names",
    "check_eps",
]

#: The attacks of ``distilldetect adversarial`` (``blackbox`` is :func:`simba`).
ATTACKS: tuple[str, ...] = ("fgsm", "pgd", "cw", "blackbox", "adaptive")
#: The attacks that need the teacher's gradients (a torch or tf.keras model).
GRADIENT_ATTACKS: tuple[str, ...] = ("fgsm", "pgd", "cw", "adaptive")
#: The gradient attacks written for tf.keras models too (all of them).
TF_GRADIENT_ATTACKS: tuple[str, ...] = ("fgsm", "pgd", "cw", "adaptive")
#: The attacks that only query the teacher's predictions.
QUERY_ATTACKS: tuple[str, ...] = ("blackbox",)
NORMS: tuple[str, ...] = ("linf", "l2")


def check_attack_names(names: Any, name: str = "attacks") -> list[str]:
    """Check a list of attack names (of :data:`ATTACKS`)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TypeError(f"{name} must be a list of attack names, got {describe(names)}")
    unknown = [a for a in names if a not in ATTACKS]
    if unknown or not names:
        raise ValueError(f"unknown attack(s) {unknown or '[]'} in {name}; valid: {list(ATTACKS)}")
    return list(names)


def _check_clip(clip: Any) -> tuple[float, float] | None:
    if clip is None:
        return None
    if (
        not isinstance(clip, (tuple, list))
        or len(clip) != 2
        or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in clip)
    ):
        raise TypeError(f"clip must be None or (low, high) finite numbers, got {describe(clip)}")
    if not clip[0] < clip[1]:
        raise ValueError(f"clip must be (low, high) with low < high, got {tuple(clip)}")
    return float(clip[0]), float(clip[1])


def _gradient_backend(model: Any, attack: str, name: str = "model") -> Any:
    """The backend with gradients for ``model`` (torch or tf.keras); TypeError naming the
    attacks that would work if it has none (a black-box callable)."""
    framework = framework_of(model)
    if framework in ("pytorch", "tensorflow"):
        return get_backend(framework)
    if framework == "callable":
        raise TypeError(
            f"{attack} needs the gradients of {name}, but {name} is a black-box callable; "
            f"the gradient attacks {list(GRADIENT_ATTACKS)} need a torch.nn.Module or a "
            "tf.keras model, the "
            f"query-only attacks {list(QUERY_ATTACKS)} (simba, square) work on any callable"
        )
    raise TypeError(
        f"{attack} needs the gradients of {name}, a torch.nn.Module or a tf.keras model "
        f"(got a {framework} {name}); the query-only attacks {list(QUERY_ATTACKS)} work on any "
        "callable"
    )


def _common(
    model: Any, x: Any, y: Any, eps: Any, attack: str, seed: Any, batch_size: Any, verbose: Any
) -> tuple[Any, np.ndarray, np.ndarray, float]:
    backend = _gradient_backend(model, attack)
    x, y = _check_xy(x, y)
    eps = check_eps(eps)
    check_seed(seed)
    check_batch_size(batch_size)
    check_bool(verbose, "verbose")
    return backend, x, y, eps


def fgsm(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    *,
    clip: tuple[float, float] | None = None,
    batch_size: int = 256,
    verbose: bool = True,
) -> np.ndarray:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of ``eps`` along the sign
    of the gradient of the teacher's cross-entropy. Deterministic (no ``seed``, one step).

    Parameters
    ----------
    model
        The teacher, a ``torch.nn.Module`` or a tf.keras model, returning probabilities.
    x, y
        Float batch and integer true labels.
    eps
        L-inf budget: every pixel moves by exactly ``eps`` (where its gradient is not zero),
        then ``clip`` applies.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1))
    >>> fgsm(net, np.zeros((1, 4), np.float32), np.array([0]), 0.5, verbose=False).shape
    (1, 4)
    """
    backend, x, y, eps = _common(model, x, y, eps, "fgsm", None, batch_size, verbose)
    return backend.attacks.pgd(
        model,
        x,
        y,
        eps,
        norm="linf",
        steps=1,
        step_size=eps,
        random_start=False,
        clip=_check_clip(clip),
        seed=None,
        batch_size=batch_size,
        verbose=verbose,
        desc="FGSM",
    )


def _check_pgd(norm: Any, steps: Any, step_size: Any, random_start: Any) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
    check_positive_int(steps, "steps")
    if step_size is not None:
        check_positive_float(step_size, "step_size")
    check_bool(random_start, "random_start")


def pgd(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    clip: tuple[float, float] | None = None,
    seed: int | None = 0,
    batch_size: int = 256,
    verbose: bool = True,
) -> np.ndarray:
    """Projected Gradient Descent (Madry et al. 2018), untargeted, in the ``norm`` ball of
    radius ``eps``: ``steps`` steps of ``step_size`` (default ``2.5 * eps / steps``) from a
    random start in the ball (seeded), each projected back into the ball (and ``clip``).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1))
    >>> x = np.zeros((3, 4), np.float32)
    >>> x_adv = pgd(net, x, np.array([0, 1, 2]), 1.0, norm="l2", verbose=False)
    >>> bool(np.linalg.norm(x_adv - x, axis=1).max() <= 1.0 + 1e-5)
    True
    """
    backend, x, y, eps = _common(model, x, y, eps, "pgd", seed, batch_size, verbose)
    _check_pgd(norm, steps, step_size, random_start)
    return backend.attacks.pgd(
        model,
        x,
        y,
        eps,
        norm=norm,
        steps=steps,
        step_size=step_size,
        random_start=random_start,
        clip=_check_clip(clip),
        seed=seed,
        batch_size=batch_size,
        verbose=verbose,
        desc=f"PGD-{norm}",
    )


def carlini_wagner_l2(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    *,
    steps: int = 100,
    c: float = 1.0,
    binary_search_steps: int = 5,
    learning_rate: float = 0.1,
    kappa: float = 0.0,
    clip: tuple[float, float] | None = None,
    seed: int | None = 0,
    batch_size: int = 256,
    verbose: bool = True,
) -> np.ndarray:
    """Carlini-Wagner L2 (2017), untargeted, bounded per pixel by ``eps``.

    Minimises ``||d||_2^2 + c * max(Z_y - max_{j != y} Z_j, -kappa)`` over ``d = eps*tanh(w)``
    with Adam (``steps`` steps of ``learning_rate``), ``binary_search_steps`` rounds of binary
    search on ``c`` per image (starting at ``c``); each image keeps its smallest-L2 success.
    Written here (ART's C&W needs logits from the estimator and runs image by image).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1))
    >>> x = np.zeros((2, 4), np.float32)
    >>> a = carlini_wagner_l2(net, x, np.array([0, 1]), 0.5, steps=5, binary_search_steps=1,
    ...                       verbose=False)
    >>> bool(np.abs(a - x).max() <= 0.5)
    True
    """
    backend, x, y, eps = _common(model, x, y, eps, "cw", seed, batch_size, verbose)
    check_positive_int(steps, "steps")
    check_positive_int(binary_search_steps, "binary_search_steps")
    check_positive_float(c, "c")
    check_positive_float(learning_rate, "learning_rate")
    if isinstance(kappa, bool) or not isinstance(kappa, numbers.Real) or not kappa >= 0:
        raise ValueError(f"kappa must be a number >= 0, got {describe(kappa)}")
    return backend.attacks.carlini_wagner_l2(
        model,
        x,
        y,
        eps,
        steps=steps,
        c=float(c),
        binary_search_steps=binary_search_steps,
        learning_rate=float(learning_rate),
        kappa=float(kappa),
        clip=_check_clip(clip),
        seed=seed,
        batch_size=batch_size,
        verbose=verbose,
    )


def adaptive_pgd(
    model: Any,
    students: Any,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    *,
    lam: float = 1.0,
    temperature: float = 1.0,
    loss_type: str = "kld",
    reduce: str = "mean",
    objective: str = "margin",
    kappa: float = 2.0,
    norm: str = "linf",
    steps: int = 40,
    step_size: float | None = None,
    random_start: bool = True,
    clip: tuple[float, float] | None = None,
    seed: int | None = 0,
    batch_size: int = 256,
    verbose: bool = True,
) -> np.ndarray:
    """The adaptive attack: PGD on ``L(teacher(x'), y) - lam * score(x')``.

    ``objective='margin'`` (default): ``L = min(max_{j!=y} Z_j - Z_y, kappa)`` on the teacher's
    logits, so that once an image is fooled by a margin ``kappa`` only the score term pulls;
    ``objective='ce'``: ``L`` is the cross-entropy (which keeps growing and, for ``lam`` large
    enough to matter, mostly stops the attack from fooling the teacher at all).

    ``score`` is the detector's distillation score (``loss_type``, ``temperature``) of the
    student, or the mean (``reduce='mean'``) or max of the students' scores for an ensemble.
    The attacker fools the teacher while keeping the student(s) in agreement; each image keeps
    the iterate with the lowest score among those that fool the teacher. Pass the detector's
    own students for a white-box attack, surrogate students for a gray-box one.

    Parameters
    ----------
    model
        The teacher (a torch module or a tf.keras model).
    students
        A student or a list of them, in the teacher's framework (all differentiable).
    lam
        Weight of the score term (``lam=0``: plain PGD that picks, among its fooling iterates,
        the least suspicious).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1))
    >>> student = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1))
    >>> x = np.zeros((2, 4), np.float32)
    >>> adaptive_pgd(net, student, x, np.array([0, 1]), 0.3, steps=3, verbose=False).shape
    (2, 4)
    """
    backend, x, y, eps = _common(model, x, y, eps, "adaptive", seed, batch_size, verbose)
    _check_pgd(norm, steps, step_size, random_start)
    student_list = list(students) if isinstance(students, (list, tuple)) else [students]
    if not student_list:
        raise ValueError("students must hold at least one distilled model, got none")
    for i, s in enumerate(student_list):
        if _gradient_backend(s, "adaptive", name=f"students[{i}]") is not backend:
            raise TypeError(
                f"students[{i}] is a {framework_of(s)} model and the teacher a "
                f"{framework_of(model)} one: the adaptive attack differentiates through both, "
                "so they must be in the same framework"
            )
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam):
        raise TypeError(f"lam must be a finite number >= 0, got {describe(lam)}")
    if lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    check_positive_float(temperature, "temperature")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {list(LOSS_TYPES)}, got {loss_type!r}")
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    if objective not in ("margin", "ce"):
        raise ValueError(f"objective must be 'margin' or 'ce', got {objective!r}")
    if isinstance(kappa, bool) or not isinstance(kappa, numbers.Real) or not kappa > 0:
        raise ValueError(f"kappa must be a number > 0, got {describe(kappa)}")
    return backend.attacks.pgd(
        model,
        x,
        y,
        eps,
        norm=norm,
        steps=steps,
        step_size=step_size,
        random_start=random_start,
        clip=_check_clip(clip),
        seed=seed,
        batch_size=batch_size,
        verbose=verbose,
        students=student_list,
        lam=float(lam),
        temperature=float(temperature),
        loss_type=loss_type,
        reduce=reduce,
        kappa=float(kappa) if objective == "margin" else None,
        desc=f"Adaptive PGD (lambda={lam:g})",
    )
