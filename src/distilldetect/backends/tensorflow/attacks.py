"""Gradient attacks on tf.keras classifiers: FGSM and PGD (L-inf / L2), by ``tf.GradientTape``.

Numpy in, numpy out, in batches; the model's weights are never changed (it runs with
``training=False`` and only the input is watched). The framework-free face, with the argument
checks, is :mod:`distilldetect.attacks`; call that, not this module. Carlini-Wagner and the
adaptive attack are written for torch models only (:mod:`distilldetect.backends.torch.attacks`).

The model returns probabilities; the loss is the cross-entropy ``-log p_y`` (the same as the
cross-entropy of the logits, so the same gradients as the torch attacks take through a zoo
model's ``forward_logits``). The random start is drawn from a NumPy generator seeded with
``seed``: the same seed gives the same start, though not the one the torch backend draws.

Examples
--------
>>> import numpy as np
>>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
>>> x = np.zeros((2, 4), np.float32)
>>> x_adv = pgd(net, x, np.array([0, 1]), 0.1, steps=1, step_size=0.1, random_start=False,
...             verbose=False)
>>> bool(np.abs(x_adv - x).max() <= 0.1 + 1e-7)
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from .runtime import keras  # noqa: F401 - the examples' namespace

__all__ = ["pgd"]


def _flat_norm(t: tf.Tensor) -> tf.Tensor:
    """L2 norm of each row, shaped to broadcast against ``t``."""
    norm = tf.norm(tf.reshape(t, (tf.shape(t)[0], -1)), axis=1)
    return tf.reshape(tf.maximum(norm, 1e-12), [-1] + [1] * (len(t.shape) - 1))


def _project(delta: tf.Tensor, eps: float, norm: str) -> tf.Tensor:
    if norm == "linf":
        return tf.clip_by_value(delta, -eps, eps)
    return delta * tf.minimum(eps / _flat_norm(delta), 1.0)


def _start(shape: tuple[int, ...], eps: float, norm: str, rng: np.random.Generator) -> np.ndarray:
    if norm == "linf":
        return ((rng.random(shape, dtype=np.float32) * 2 - 1) * eps).astype(np.float32)
    direction = rng.standard_normal(shape, dtype=np.float32)
    norms = np.linalg.norm(direction.reshape(shape[0], -1), axis=1).clip(1e-12)
    radius = rng.random(shape[0], dtype=np.float32) * eps
    scale = (radius / norms).reshape((-1,) + (1,) * (len(shape) - 1))
    return (direction * scale).astype(np.float32)


def _objective(model: Any, x: tf.Tensor, y: tf.Tensor, kappa: float | None) -> tf.Tensor:
    probs = tf.cast(model(x, training=False), tf.float32)
    log_p = tf.math.log(tf.maximum(probs, 1e-12))
    true = tf.gather(log_p, y, axis=1, batch_dims=1)
    if kappa is None:
        return -true  # cross-entropy of each row
    other = tf.reduce_max(log_p - 1e30 * tf.one_hot(y, log_p.shape[1]), axis=1)
    return tf.minimum(other - true, kappa)  # the hinged margin (log-probabilities as logits)


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
    kappa: float | None = None,
    desc: str = "PGD",
) -> np.ndarray:
    """Projected gradient ascent of ``CE(model(x'), y)`` in the ``norm`` ball of radius ``eps``.

    FGSM is ``steps=1, step_size=eps, random_start=False, norm='linf'``. With ``kappa`` the
    objective is the hinged margin ``min(max_{j!=y} log p_j - log p_y, kappa)``.
    """
    from tqdm.auto import tqdm

    alpha = float(step_size) if step_size is not None else 2.5 * eps / steps
    rng = np.random.default_rng(seed)
    out = np.empty_like(x)
    for start in tqdm(range(0, len(x), batch_size), desc=desc, disable=not verbose, leave=False):
        xb = tf.constant(np.asarray(x[start : start + batch_size], np.float32))
        yb = tf.constant(np.asarray(y[start : start + batch_size], np.int64))
        if random_start:
            delta = tf.constant(_start(tuple(xb.shape), eps, norm, rng))
        else:
            delta = tf.zeros_like(xb)
        if clip is not None:
            delta = tf.clip_by_value(xb + delta, clip[0], clip[1]) - xb
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                objective = tf.reduce_sum(_objective(model, xb + delta, yb, kappa))
            grad = tape.gradient(objective, delta)
            if norm == "linf":
                delta = delta + alpha * tf.sign(grad)
            else:
                delta = delta + alpha * grad / _flat_norm(grad)
            delta = _project(delta, eps, norm)
            if clip is not None:
                delta = tf.clip_by_value(xb + delta, clip[0], clip[1]) - xb
        out[start : start + len(xb)] = (xb + delta).numpy().astype(x.dtype, copy=False)
    return out
