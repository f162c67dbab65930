"""Query-only attacks: they call the teacher on numpy batches and read its probabilities, nothing
else, so they work on any teacher (a torch module, a Keras model, a scikit-learn
``predict_proba``, a remote model).

* :func:`simba` — SimBA (Guo et al. 2019, "Simple Black-box Adversarial Attacks"), pixel basis,
  L-inf: each step tries one coordinate at ``-eps`` then ``+eps`` and keeps the change if the
  true class's probability drops. Written here, numpy only.
* :func:`square` — the Square attack (Andriushchenko et al. 2020) of the Adversarial Robustness
  Toolbox, behind the ``[attacks]`` extra.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends import inference
from ..base import (
    check_batch_size,
    check_bool,
    check_positive_int,
    check_seed,
)
from ._checks import _check_xy, check_eps

__all__ = ["simba", "square"]


def _checks(x: Any, y: Any, eps: Any, steps: Any, seed: Any, batch_size: Any, verbose: Any):
    x, y = _check_xy(x, y)
    eps = check_eps(eps)
    check_positive_int(steps, "steps")
    check_seed(seed)
    check_batch_size(batch_size)
    check_bool(verbose, "verbose")
    return x, y, eps


def _probs(forward: Any, x: np.ndarray) -> np.ndarray:
    out = forward(x)
    if isinstance(out, tuple):
        out = out[0]
    out = np.asarray(out, dtype=np.float64)
    if out.ndim != 2 or len(out) != len(x):
        raise ValueError(
            f"model must return an (n, n_classes) array of probabilities, got shape {out.shape}"
        )
    return out


def simba(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    *,
    steps: int = 1000,
    clip: tuple[float, float] | None = None,
    seed: int | None = 0,
    batch_size: int = 256,
    verbose: bool = True,
) -> np.ndarray:
    """SimBA in the pixel basis under an L-inf budget ``eps``, using only the model's outputs.

    For every image, coordinates are visited in a random (seeded) order; at each of ``steps``
    steps the next coordinate is moved to ``-eps`` and, if the true class's probability did not
    drop, to ``+eps``; the change is kept only if it lowered that probability. Images already
    misclassified stop. At most ``2 * steps + 1`` queries per image.

    Parameters
    ----------
    model
        Any model: a torch module, a Keras model or a callable ``probs = model(x_batch)``.

    Examples
    --------
    >>> w = np.array([[1.0, -1.0], [-1.0, 1.0]])
    >>> def predict(x):  # a black box: numpy in, probabilities out
    ...     z = x @ w
    ...     e = np.exp(z - z.max(1, keepdims=True))
    ...     return e / e.sum(1, keepdims=True)
    >>> x = np.array([[0.3, 0.0]])
    >>> x_adv = simba(predict, x, np.array([0]), eps=0.5, steps=2, verbose=False)
    >>> int(predict(x_adv).argmax(1)[0])
    1
    """
    from tqdm.auto import tqdm

    from . import _check_clip

    x, y, eps = _checks(x, y, eps, steps, seed, batch_size, verbose)
    clip = _check_clip(clip)
    rng = np.random.default_rng(seed)
    d = int(np.prod(x.shape[1:]))
    out = np.array(x, copy=True)
    with inference(model) as forward:
        bar = tqdm(range(0, len(x), batch_size), desc="SimBA", disable=not verbose, leave=False)
        for start in bar:
            xb = out[start : start + batch_size].reshape(len(out[start : start + batch_size]), d)
            x0 = xb.copy()
            yb = y[start : start + len(xb)]
            rows = np.arange(len(xb))
            order = np.argsort(rng.random((len(xb), d)), axis=1)
            probs = _probs(forward, xb.reshape((len(xb), *x.shape[1:])).astype(x.dtype))
            p_true = probs[rows, yb]
            active = probs.argmax(1) == yb
            for t in range(steps):
                if not active.any():
                    break
                idx = np.flatnonzero(active)
                coord = order[idx, t % d]
                improved = np.zeros(len(idx), dtype=bool)
                for sign in (-1.0, 1.0):
                    todo = ~improved
                    if not todo.any():
                        break
                    sel, cols = idx[todo], coord[todo]
                    trial = xb[sel].copy()
                    trial[np.arange(len(sel)), cols] = x0[sel, cols] + sign * eps
                    if clip is not None:
                        trial = np.clip(trial, clip[0], clip[1])
                    p = _probs(forward, trial.reshape((len(sel), *x.shape[1:])).astype(x.dtype))
                    better = p[np.arange(len(sel)), yb[sel]] < p_true[sel]
                    keep = sel[better]
                    xb[keep] = trial[better]
                    p_true[keep] = p[better, yb[keep]]
                    active[keep] = p[better].argmax(1) == yb[keep]
                    improved[np.flatnonzero(todo)[better]] = True
            out[start : start + len(xb)] = xb.reshape((len(xb), *x.shape[1:])).astype(x.dtype)
    return out


def square(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    *,
    steps: int = 1000,
    n_classes: int | None = None,
    clip: tuple[float, float] | None = None,
    p_init: float = 0.8,
    seed: int | None = 0,
    batch_size: int = 256,
    verbose: bool = True,
) -> np.ndarray:
    """The Square attack (L-inf, untargeted) of the Adversarial Robustness Toolbox; query-only.

    Needs the ``[attacks]`` extra (``pip install 'distilldetect[attacks]'``). ``clip`` defaults
    to the batch's own range widened by ``eps`` (ART needs a range). ART draws from numpy's
    global generator: it is seeded with ``seed`` here, and restored afterwards.

    Examples
    --------
    >>> x_adv = square(predict, x, y, eps=0.3, steps=200)  # doctest: +SKIP
    """
    x, y, eps = _checks(x, y, eps, steps, seed, batch_size, verbose)
    try:
        from art.attacks.evasion import SquareAttack
        from art.estimators.classification import BlackBoxClassifierNeuralNetwork
    except ImportError as err:
        raise ImportError(
            "square needs the Adversarial Robustness Toolbox: pip install "
            f"'distilldetect[attacks]' ({err})"
        ) from err
    from . import _check_clip

    clip = _check_clip(clip)
    if clip is None:
        clip = (float(x.min()) - eps, float(x.max()) + eps)
    shape = x.shape[1:]
    channels = len(shape) == 3
    with inference(model) as forward:

        def predict(batch: np.ndarray) -> np.ndarray:
            batch = batch.astype(x.dtype)
            return _probs(forward, batch if channels else batch.reshape((len(batch), *shape)))

        if n_classes is None:
            n_classes = _probs(forward, x[:1]).shape[1]
        art_shape = shape if channels else (*shape, 1) if len(shape) == 2 else shape
        clf = BlackBoxClassifierNeuralNetwork(
            predict,
            input_shape=art_shape,
            nb_classes=n_classes,
            clip_values=clip,
            channels_first=False,
        )
        attack = SquareAttack(
            clf,
            norm=np.inf,
            eps=eps,
            max_iter=steps,
            p_init=p_init,
            batch_size=batch_size,
            verbose=verbose,
        )
        state = np.random.get_state()  # noqa: NPY002 - ART draws from the global generator
        try:
            if seed is not None:
                np.random.seed(seed % 2**32)  # noqa: NPY002
            labels = np.eye(n_classes, dtype=np.float32)[y]
            adv = attack.generate(x.reshape((len(x), *art_shape)), y=labels)
        finally:
            np.random.set_state(state)  # noqa: NPY002
    return np.asarray(adv, dtype=x.dtype).reshape(x.shape)
