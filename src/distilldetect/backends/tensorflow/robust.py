"""Adversarial (TRADES-style) augmentation of a tf.keras student's training batches.

The twin of :mod:`distilldetect.backends.torch.robust`: :func:`adversarial_perturb` moves each
chosen row of a batch to the point of the L-inf ball around it where the *student's* output
differs most from its output on the clean row (``KL(student(x) || student(x'))``, PGD with a
random start), by ``tf.GradientTape``. The rows and their random starts are drawn by the
caller, :func:`distilldetect.augment.adversarial_augment`, for both backends, so twin models
with the same weights get the same perturbations up to float rounding. Call that face (it
checks the arguments), not this module.

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
    start: np.ndarray,
    eps: float,
    steps: int,
    step_size: float,
    clip: tuple[float, float] | None = None,
) -> np.ndarray:
    """The rows of ``x`` moved by PGD from ``x + start``; the arguments and the result are
    those of the torch twin, :func:`distilldetect.backends.torch.robust.adversarial_perturb`
    (``student`` a tf.keras model returning probabilities).

    Examples
    --------
    >>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    >>> x = np.zeros((5, 4), np.float32)
    >>> out = adversarial_perturb(net, x, np.full((5, 4), 0.05), 0.1, 3, 0.1)
    >>> out.shape, bool(np.abs(out).max() <= 0.1 + 1e-6)
    ((5, 4), True)
    """
    xc = tf.constant(np.asarray(x, np.float32))
    delta = tf.constant(np.asarray(start, np.float32))
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
    return _inside(delta).numpy()
