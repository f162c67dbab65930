"""The score maths, written once, in numpy.

Every backend's training loss is tested against the functions here, and the detector's
``score`` calls them directly. The definitions follow Keras (and so alibi-detect):

* temperature sharpening of the teacher: ``p ** (1 / T)``, renormalised per row (computed in
  log space);
* ``'kld'``: Keras ``kl_divergence`` — both probability vectors clipped to ``[eps, 1]``, then
  ``sum(p * log(p / q))``;
* ``'xent'``: Keras ``categorical_crossentropy`` on probabilities — the student's row is
  renormalised and clipped to ``[eps, 1 - eps]``, then ``-sum(p * log(q))``.

``eps`` is Keras' fuzz factor, ``1e-7``.
"""

from __future__ import annotations

import numpy as np

EPSILON: float = 1e-7
LOSS_TYPES: tuple[str, ...] = ("kld", "xent")

__all__ = ["EPSILON", "LOSS_TYPES", "sharpen", "kld", "xent", "distillation_score"]


def sharpen(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Sharpen (``T < 1``) or flatten (``T > 1``) probabilities: ``p ** (1 / T)``, renormalised.

    Computed in log space, ``softmax((log p - max log p) / T)``, in float64: the same values as
    the power formula, without its underflow to ``0 / 0`` when a small temperature meets a flat
    row (any finite ``T > 0`` gives finite probabilities; as ``T -> 0`` the row tends to one-hot).

    Parameters
    ----------
    probs
        Array ``(n, k)`` of class probabilities.
    temperature
        Positive temperature ``T``; ``T == 1`` returns ``probs`` unchanged (same object).

    Returns
    -------
    numpy.ndarray
        Array ``(n, k)`` of the input's floating dtype whose rows sum to one.

    Examples
    --------
    >>> sharpen(np.array([[0.25, 0.75]]), 0.5).round(3)
    array([[0.1, 0.9]])
    >>> sharpen(np.array([[0.4, 0.35, 0.25]]), 1e-3).round(3)  # 0.4 ** 1000 underflows; no NaN
    array([[1., 0., 0.]])
    """
    if temperature == 1:
        return probs
    dtype = probs.dtype if probs.dtype.kind == "f" else np.float64
    with np.errstate(divide="ignore"):
        logp = np.log(np.asarray(probs, dtype=np.float64))
    z = (logp - logp.max(axis=-1, keepdims=True)) / temperature
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(dtype, copy=False)


def kld(p: np.ndarray, q: np.ndarray, eps: float = EPSILON) -> np.ndarray:
    """Per-row Kullback-Leibler divergence ``KL(p || q)`` with Keras' clipping.

    Computed in float64 whatever the input dtype.

    Examples
    --------
    >>> float(kld(np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]]))[0])
    0.0
    """
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0)
    q = np.clip(np.asarray(q, dtype=np.float64), eps, 1.0)
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def xent(p: np.ndarray, q: np.ndarray, eps: float = EPSILON) -> np.ndarray:
    """Per-row cross-entropy ``-sum(p * log q)`` as Keras' ``categorical_crossentropy``.

    The student's row ``q`` is renormalised to sum to one and clipped to ``[eps, 1 - eps]``;
    the teacher's ``p`` is used as given. Computed in float64.

    Examples
    --------
    >>> round(float(xent(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]]))[0]), 4)
    0.6931
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    q = np.clip(q / q.sum(axis=-1, keepdims=True), eps, 1.0 - eps)
    return -np.sum(p * np.log(q), axis=-1)


def distillation_score(
    teacher_probs: np.ndarray,
    student_probs: np.ndarray,
    loss_type: str = "kld",
    temperature: float = 1.0,
) -> np.ndarray:
    """Per-instance harmfulness score: the distillation loss between teacher and student.

    Parameters
    ----------
    teacher_probs
        Raw (not yet sharpened) teacher probabilities, ``(n, k)``.
    student_probs
        Student probabilities, ``(n, k)``.
    loss_type
        ``'kld'`` or ``'xent'``.
    temperature
        Temperature applied to the teacher's probabilities only.

    Returns
    -------
    numpy.ndarray
        Float64 array ``(n,)``.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.5, 0.5]])
    >>> distillation_score(p, p).round(6)
    array([0., 0.])
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    p = sharpen(np.asarray(teacher_probs, dtype=np.float64), temperature)
    if loss_type == "kld":
        return kld(p, student_probs)
    return xent(p, student_probs)
