"""Gradient attacks on tf.keras classifiers: FGSM, PGD (L-inf / L2), Carlini-Wagner L2 and the
adaptive PGD that also keeps distilled students in agreement, by ``tf.GradientTape``.

Numpy in, numpy out, in batches; the model's weights are never changed (it runs with
``training=False`` and only the input is watched). The framework-free face, with the argument
checks, is :mod:`distilldetect.attacks`; call that, not this module. The adaptive attack is
:func:`pgd` with Keras ``students`` (teacher and students in the same framework).

The model returns probabilities; the attacks use ``log p`` as logits. The cross-entropy
``-log p_y`` and the margins ``log p_j - log p_y`` equal those of the logits themselves, so the
objectives are the ones the torch attacks take through a zoo model's ``forward_logits``.
Random numbers (PGD's start, C&W's initial ``w``) come from a NumPy generator seeded with
``seed``: the same seed gives the same result, though not the torch backend's draws.

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

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from .runtime import distillation_loss, keras  # noqa: F401 - keras: the examples' namespace

__all__ = ["pgd", "carlini_wagner_l2"]


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


def _log_probs(model: Any, x: tf.Tensor) -> tf.Tensor:
    probs = tf.cast(model(x, training=False), tf.float32)
    return tf.math.log(tf.maximum(probs, 1e-12))


def _margin(log_p: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(log p_y, max_{j != y} log p_j)`` of each row."""
    true = tf.gather(log_p, y, axis=1, batch_dims=1)
    other = tf.reduce_max(log_p - 1e30 * tf.one_hot(y, log_p.shape[1]), axis=1)
    return true, other


def _student_score(
    log_p_teacher: tf.Tensor,
    students: Sequence[Any],
    x: tf.Tensor,
    temperature: float,
    loss_type: str,
    reduce: str,
) -> tf.Tensor:
    """The distillation score of each row (mean or max over the students), differentiable."""
    p = tf.nn.softmax(log_p_teacher / temperature, axis=-1)  # = sharpen(p, T)
    scores = tf.stack(
        [distillation_loss(p, s(x, training=False), loss_type) for s in students], axis=0
    )
    return tf.reduce_mean(scores, 0) if reduce == "mean" else tf.reduce_max(scores, 0)


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
    students: Sequence[Any] = (),
    lam: float = 0.0,
    temperature: float = 1.0,
    loss_type: str = "kld",
    reduce: str = "mean",
    kappa: float | None = None,
    desc: str = "PGD",
) -> np.ndarray:
    """Projected gradient ascent of ``CE(model(x'), y) - lam * score(x')`` in the eps ball.

    FGSM is ``steps=1, step_size=eps, random_start=False, norm='linf'``. With ``kappa`` the
    first term is the hinged margin ``min(max_{j!=y} log p_j - log p_y, kappa)``. With
    ``students`` (Keras models: the adaptive attack), each image keeps the iterate with the
    lowest score among those that fool the model (the last iterate if none does).
    """
    from tqdm.auto import tqdm

    alpha = float(step_size) if step_size is not None else 2.5 * eps / steps
    adaptive = len(students) > 0
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
        best = (xb + delta).numpy()
        best_score = np.full(len(best), np.inf, np.float32)
        for step in range(steps + (1 if adaptive else 0)):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                xa = xb + delta
                log_p = _log_probs(model, xa)
                true, other = _margin(log_p, yb)
                objective = -true if kappa is None else tf.minimum(other - true, kappa)
                if adaptive:
                    score = _student_score(log_p, students, xa, temperature, loss_type, reduce)
                    objective = objective - lam * tf.cast(score, objective.dtype)
                total = tf.reduce_sum(objective)
            if adaptive:
                fooled = (tf.argmax(log_p, axis=1) != yb).numpy()
                better = fooled & (score.numpy() < best_score)
                best_score = np.where(better, score.numpy(), best_score)
                best[better] = xa.numpy()[better]
                if step == steps:  # the last pass only evaluates the final iterate
                    break
            grad = tape.gradient(total, delta)
            if norm == "linf":
                delta = delta + alpha * tf.sign(grad)
            else:
                delta = delta + alpha * grad / _flat_norm(grad)
            delta = _project(delta, eps, norm)
            if clip is not None:
                delta = tf.clip_by_value(xb + delta, clip[0], clip[1]) - xb
        final = (xb + delta).numpy()
        if adaptive:
            never = np.isinf(best_score)
            best[never] = final[never]
            final = best
        out[start : start + len(xb)] = final.astype(x.dtype, copy=False)
    return out


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
    """Carlini-Wagner L2 (untargeted): minimise ``||d||_2^2 + c * max(Z_y - max_j!=y Z_j, -kappa)``
    with Adam (torch's update rule, written out), ``d = eps * tanh(w)``, binary search over
    ``c``. Each image keeps its smallest-L2 perturbation that fools the model; an image never
    fooled keeps the last one tried.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
    out = np.empty_like(x)
    for start in tqdm(
        range(0, len(x), batch_size), desc="C&W L2", disable=not verbose, leave=False
    ):
        xb = tf.constant(np.asarray(x[start : start + batch_size], np.float32))
        yb = tf.constant(np.asarray(y[start : start + batch_size], np.int64))
        n = int(xb.shape[0])
        lower, upper = np.zeros(n, np.float32), np.full(n, np.inf, np.float32)
        const = np.full(n, c, np.float32)
        best, best_l2 = xb.numpy().copy(), np.full(n, np.inf, np.float32)
        last = best.copy()
        for _ in range(binary_search_steps):
            w = tf.constant(rng.standard_normal(tuple(xb.shape), dtype=np.float32) * 1e-3)
            m, v = tf.zeros_like(w), tf.zeros_like(w)
            succeeded = np.zeros(n, bool)
            for t in range(1, steps + 1):
                with tf.GradientTape() as tape:
                    tape.watch(w)
                    xa = xb + eps * tf.tanh(w)
                    if clip is not None:
                        xa = tf.clip_by_value(xa, clip[0], clip[1])
                    log_p = _log_probs(model, xa)
                    true, other = _margin(log_p, yb)
                    margin = tf.maximum(true - other, -kappa)
                    l2sq = tf.reduce_sum(tf.reshape(xa - xb, (n, -1)) ** 2, axis=1)
                    loss = tf.reduce_sum(l2sq + tf.constant(const) * margin)
                grad = tape.gradient(loss, w)
                m = beta1 * m + (1 - beta1) * grad
                v = beta2 * v + (1 - beta2) * grad * grad
                denom = tf.sqrt(v) / (1 - beta2**t) ** 0.5 + adam_eps
                w = w - (learning_rate / (1 - beta1**t)) * m / denom
                fooled = (tf.argmax(log_p, axis=1) != yb).numpy()
                l2 = np.sqrt(l2sq.numpy())
                better = fooled & (l2 < best_l2)
                best_l2 = np.where(better, l2, best_l2)
                best[better] = xa.numpy()[better]
                succeeded |= fooled
                last = xa.numpy()
            upper = np.where(succeeded, np.minimum(upper, const), upper)
            lower = np.where(succeeded, lower, np.maximum(lower, const))
            const = np.where(np.isinf(upper), const * 10, (lower + upper) / 2).astype(np.float32)
        never = np.isinf(best_l2)
        best[never] = last[never]
        out[start : start + n] = best.astype(x.dtype, copy=False)
    return out
