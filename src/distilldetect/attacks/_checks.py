"""Input checks shared by the gradient and the query-only attacks (one place for each)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ..base import check_array, describe

__all__ = ["check_eps"]


def check_eps(eps: Any, name: str = "eps") -> float:
    """Check a perturbation budget: a finite number > 0."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{name} must be a finite number > 0, got {describe(eps)}")
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {eps!r}")
    return float(eps)


def _check_xy(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = check_array(x, "x", min_ndim=2)
    if x.dtype.kind != "f":
        raise TypeError(f"x must be a floating array (the model's input), got dtype {x.dtype}")
    y = np.asarray(y) if isinstance(y, (list, tuple)) else y
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.ndim != 1:
        raise TypeError(f"y must be a 1-D integer array of class labels, got {describe(y)}")
    if len(y) != len(x):
        raise ValueError(f"y must have one label per row of x ({len(x)}), got {len(y)}")
    if (y < 0).any():
        raise ValueError(f"y must hold class indices >= 0, got minimum {int(y.min())}")
    return x, y.astype(np.int64)
