"""Adversarial (TRADES-style) augmentation of a tf.keras student's training batches.

The twin of :mod:`distilldetect.backends.torch.robust`: :func:`adversarial_perturb` moves each
chosen row of a batch to the point of the L-inf ball around it where the *student's* output
differs most from its output on the clean row (``KL(student(x) || student(x'))``, PGD with a
random start), by ``tf.GradientTape``. It draws the same rows and random starts from the same
generator as the torch twin, so twin models with the same weights get the same perturbations
up to float rounding. The framework-free face, with the argument checks, is
:func:`distilldetect.augment.adversarial_augment`; call that, not this module.

The student runs with ``training=False`` and only the input is watched: its weights, and the
statistics of its normalisation layers, are never changed here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from .attacks import _log_probs
from .runtime import keras  # noqa: F401 - keras: the examples' namespace

__all__ = ["adversarial_perturb"]


def _kl_rows(log_p: tf.Tensor, log_q: tf.Tensor) -> tf.Tensor:
    """KL(p || q) of each row, from log-probabilities."""
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def adversarial_perturb(
    student: Any,
    x: np.ndarray,
    rng: np.random.Generator,
    eps: float,
    steps: int,
    step_size: float,
    p_adv: float,
    clip: tuple[float, float] | None = None,
) -> np.ndarray:
    """A copy of ``x`` whose rows are, with probability ``p_adv`` each, PGD-perturbed.

    Parameters
    ----------
    student
        A tf.keras model returning probabilities.
    x
        The batch (numpy, floating).
    rng
        Draws which rows are perturbed and their random starts (uniform in the ball).
    eps, steps, step_size
        L-inf budget, number of signed-gradient ascent steps and their size.
    p_adv
        Probability that a row is perturbed (the others are returned unchanged).
    clip
        Optional ``(low, high)`` bounds of valid inputs.

    Returns
    -------
    numpy.ndarray
        Same shape and dtype as ``x``; every row within ``eps`` of its clean row.

    Examples
    --------
    >>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    >>> x = np.zeros((5, 4), np.float32)
    >>> out = adversarial_perturb(net, x, np.random.default_rng(0), 0.1, 3, 0.1, 1.0)
    >>> out.shape, out.dtype, bool(np.abs(out).max() <= 0.1 + 1e-6)
    ((5, 4), dtype('float32'), True)
    """
    rows = np.flatnonzero(rng.random(len(x)) < p_adv)
    start = rng.uniform(-eps, eps, size=(len(rows),) + x.shape[1:])
    out = np.array(x, copy=True)
    if len(rows) == 0:
        return out
    xc = tf.constant(np.asarray(x[rows], np.float32))
    delta = tf.constant(start.astype(np.float32))
    log_clean = tf.stop_gradient(_log_probs(student, xc))

    def _inside(d: tf.Tensor) -> tf.Tensor:
        xa = xc + d
        return xa if clip is None else tf.clip_by_value(xa, clip[0], clip[1])

    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(delta)
            loss = tf.reduce_sum(_kl_rows(log_clean, _log_probs(student, _inside(delta))))
        grad = tape.gradient(loss, delta)
        delta = tf.clip_by_value(delta + step_size * tf.sign(grad), -eps, eps)
    out[rows] = _inside(delta).numpy().astype(x.dtype, copy=False)
    return out
