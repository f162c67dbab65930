"""Framework-neutral helpers kept under alibi-detect's names: ``predict_batch``, ``scale_by_instance``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from .backends import inference
from .base import check_array, check_batch_size, check_callable, describe

__all__ = ["predict_batch", "scale_by_instance"]


def predict_batch(
    x: np.ndarray,
    model: Any,
    batch_size: int = int(1e10),
    preprocess_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    dtype: Any = None,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Run ``model`` over ``x`` in batches and return numpy outputs.

    Parameters
    ----------
    x
        Input batch (numpy array).
    model
        A ``torch.nn.Module`` (run in eval mode without gradients, mode restored afterwards),
        a ``tf.keras`` model, or any callable on numpy batches.
    batch_size
        Instances per call.
    preprocess_fn
        Optional function applied to each batch before the model.
    dtype
        Optional numpy dtype the outputs are cast to; None keeps the model's dtype.

    Returns
    -------
    numpy.ndarray or tuple of numpy.ndarray
        The concatenated outputs (a tuple for models with several outputs).

    Examples
    --------
    >>> predict_batch(np.arange(6.0).reshape(3, 2), lambda b: b.sum(axis=1), batch_size=2)
    array([1., 5., 9.])
    """
    x = check_array(x, "x", finite=False)
    batch_size = check_batch_size(batch_size)
    preprocess_fn = check_callable(preprocess_fn, "preprocess_fn")
    if dtype is not None:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be None or a numpy dtype, got {describe(dtype)}") from None
    outputs: list[Any] = []
    with inference(model) as forward:
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            if preprocess_fn is not None:
                chunk = preprocess_fn(chunk)
            out = forward(chunk)
            parts = out if isinstance(out, tuple) else (out,)
            if not all(
                isinstance(o, np.ndarray) and o.ndim >= 1 and len(o) == len(chunk) for o in parts
            ):
                raise TypeError(
                    f"model must return an array (or a tuple of arrays) with one row per instance "
                    f"({len(chunk)}), got {describe(out)}"
                )
            outputs.append(out)
    if isinstance(outputs[0], tuple):
        result: Any = tuple(
            _cast(np.concatenate([o[i] for o in outputs]), dtype) for i in range(len(outputs[0]))
        )
        return result
    return _cast(np.concatenate(outputs), dtype)


def _cast(a: np.ndarray, dtype: Any) -> np.ndarray:
    return a if dtype is None else a.astype(dtype, copy=False)


def scale_by_instance(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Standardise each instance over all its non-batch axes: ``(x - mean) / (std + eps)``.

    The standard deviation is the population one (``ddof=0``). The result's dtype follows
    numpy's promotion (float32 in, float32 out; integers give float64). Statistics of
    half-precision input are computed in float32 (a float16 sum of squares of pixels in 0-255
    overflows), and instances whose squares would overflow their dtype are standardised after
    dividing by their largest absolute value (the same result, without the overflow).

    Parameters
    ----------
    x
        Batch of at least 2 axes, instances first.
    eps
        Added to the standard deviation to avoid division by zero on constant instances: a
        finite number >= 0.

    Examples
    --------
    >>> scale_by_instance(np.array([[1.0, 3.0], [2.0, 2.0]]))
    array([[-1.,  1.],
           [ 0.,  0.]])
    >>> scale_by_instance(np.array([[1e160, 3e160]]))
    array([[-1.,  1.]])
    """
    x = check_array(x, "x", min_ndim=2)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a finite number >= 0, got {describe(eps)}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    axes = tuple(range(1, x.ndim))
    out_dtype = x.dtype if x.dtype.kind == "f" else np.float64
    work = x.astype(np.float32) if x.dtype == np.float16 else x
    if work.dtype.kind == "f" and work.size:
        limit = np.sqrt(np.finfo(work.dtype).max / max(int(np.prod(work.shape[1:])), 1))
        peak = np.abs(work).max(axis=axes, keepdims=True)
        if (peak > limit).any():  # squares would overflow: scale the big instances down first
            scale = np.where(peak > limit, peak, 1).astype(work.dtype)
            work = work / scale
            mean = work.mean(axis=axes, keepdims=True)
            std = work.std(axis=axes, keepdims=True)
            return ((work - mean) / (std + eps / scale)).astype(out_dtype, copy=False)
    mean = work.mean(axis=axes, keepdims=True)
    std = work.std(axis=axes, keepdims=True)
    return ((work - mean) / (std + eps)).astype(out_dtype, copy=False)
