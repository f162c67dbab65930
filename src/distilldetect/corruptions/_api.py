"""Public entry points: :func:`corrupt`, :func:`get_corruption_names` and :data:`CORRUPTIONS`."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from ..base import check_seed, describe
from ._blur import defocus_blur, gaussian_blur, glass_blur, motion_blur_corruption, zoom_blur
from ._core import scale_factor
from ._digital import contrast, elastic_transform, jpeg_compression, pixelate, saturate, spatter
from ._noise import gaussian_noise, impulse_noise, shot_noise, speckle_noise
from ._weather import brightness, fog, frost, snow

__all__ = ["CORRUPTIONS", "MIN_SIDE", "SUBSETS", "corrupt", "get_corruption_names"]

logger = logging.getLogger(__name__)

CorruptionFn = Callable[[np.ndarray, int, np.random.Generator, float], np.ndarray]

_FUNCTIONS: dict[str, CorruptionFn] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur_corruption,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "spatter": spatter,
    "saturate": saturate,
}

#: The 19 CIFAR-10-C corruption names in CIFAR-10-C's order (15 benchmark ones, then 4 extra).
CORRUPTIONS: tuple[str, ...] = tuple(_FUNCTIONS)

#: Named subsets of :data:`CORRUPTIONS` accepted by :func:`get_corruption_names`.
SUBSETS: dict[str, tuple[str, ...]] = {
    "common": CORRUPTIONS[:15],
    "validation": CORRUPTIONS[15:],
    "extra": CORRUPTIONS[15:],
    "all": CORRUPTIONS,
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}

#: Smallest image height and width accepted by :func:`corrupt`.
MIN_SIDE: int = 8


def get_corruption_names(subset: str = "common") -> list[str]:
    """Names of the CIFAR-10-C corruptions in a subset.

    Parameters
    ----------
    subset
        ``'common'`` (the 15 benchmark corruptions), ``'validation'`` or its alias ``'extra'``
        (speckle_noise, gaussian_blur, spatter, saturate), ``'all'`` (19), or one of the
        benchmark's groups ``'noise'``, ``'blur'``, ``'weather'``, ``'digital'``.

    Returns
    -------
    list of str
        A new list, in CIFAR-10-C's order.

    Examples
    --------
    >>> get_corruption_names("noise")
    ['gaussian_noise', 'shot_noise', 'impulse_noise']
    >>> len(get_corruption_names("all"))
    19
    """
    if not isinstance(subset, str):
        raise TypeError(
            f"subset must be a string, one of {sorted(SUBSETS)}, got {describe(subset)}"
        )
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {sorted(SUBSETS)}, got {subset!r}")
    return list(SUBSETS[subset])


def _check_images(X: Any) -> np.ndarray:
    if not isinstance(X, np.ndarray):
        raise TypeError(
            f"X must be a numpy array of images (n, h, w) or (n, h, w, c), got {describe(X)}"
        )
    if X.dtype != np.uint8 and X.dtype.kind != "f":
        raise TypeError(
            f"X must have dtype uint8 (values 0..255) or a float dtype (values in [0, 1]), "
            f"got dtype {X.dtype}"
        )
    if X.ndim not in (3, 4):
        raise ValueError(
            f"X must be a batch of images of shape (n, h, w) or (n, h, w, c), got shape {X.shape}"
        )
    if X.ndim == 4 and X.shape[3] not in (1, 3):
        raise ValueError(
            f"X must have 1 (gray) or 3 (RGB) channels on its last axis, got shape {X.shape}"
        )
    if X.shape[0] == 0:
        raise ValueError(f"X is empty (shape {X.shape}); at least one image is needed")
    if min(X.shape[1], X.shape[2]) < MIN_SIDE:
        raise ValueError(
            f"X must hold images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got shape {X.shape}"
        )
    if X.dtype.kind == "f":
        finite = np.isfinite(X)
        if not finite.all():
            raise ValueError(
                f"X must be finite, got {int(np.isnan(X).sum())} NaN and "
                f"{int(np.isinf(X).sum())} infinite values"
            )
        lo, hi = float(X.min()), float(X.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float X must hold values in [0, 1] (use uint8 for 0..255), got values in "
                f"[{lo:.4g}, {hi:.4g}]"
            )
    return X


def _check_corruption(corruption: Any) -> str:
    if not isinstance(corruption, str):
        raise TypeError(
            f"corruption must be a string, one of {list(CORRUPTIONS)}, got {describe(corruption)}"
        )
    if corruption not in _FUNCTIONS:
        raise ValueError(f"corruption must be one of {list(CORRUPTIONS)}, got {corruption!r}")
    return corruption


def _check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral):
        raise TypeError(f"severity must be an integer in 1..5, got {describe(severity)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity}")
    return int(severity)


def corrupt(X: np.ndarray, corruption: str, severity: int, seed: int | None = None) -> np.ndarray:
    """Apply a CIFAR-10-C corruption to a batch of images.

    Parameters
    ----------
    X
        Images ``(n, h, w)`` (gray) or ``(n, h, w, c)`` with ``c`` 1 (gray) or 3 (RGB); dtype
        uint8 (0..255) or float (values in [0, 1]); height and width at least 8. Not modified.
    corruption
        One of :data:`CORRUPTIONS` (see :func:`get_corruption_names`).
    severity
        Integer 1 (mild) .. 5 (severe).
    seed
        None or a non-negative int: seeds the one random generator of the call (the same seed
        gives the same output; every image of the batch gets its own draws). Ignored by the
        deterministic corruptions.

    Returns
    -------
    numpy.ndarray
        Same shape as ``X``. uint8 input gives uint8, truncated as CIFAR-10-C does
        (``np.uint8(clip(x, 0, 1) * 255)``); float input gives the same float dtype, clipped to
        [0, 1]. For float64 input, ``corrupt(X / 255.0, ...)`` truncated to uint8 equals
        ``corrupt(X, ...)`` for uint8 ``X`` with the same seed.

    Raises
    ------
    TypeError
        ``X`` not a uint8 or float numpy array, ``corruption`` not a string, ``severity`` not
        an integer, ``seed`` not None or an integer.
    ValueError
        Wrong shape, empty batch, images smaller than 8x8, float values outside [0, 1] or not
        finite, unknown corruption name, severity outside 1..5, negative seed.

    Examples
    --------
    >>> X = np.full((2, 28, 28), 128, dtype=np.uint8)
    >>> out = corrupt(X, "gaussian_noise", severity=3, seed=0)
    >>> out.shape, out.dtype
    ((2, 28, 28), dtype('uint8'))
    >>> bool((out == corrupt(X, "gaussian_noise", 3, seed=0)).all())
    True
    """
    X = _check_images(X)
    corruption = _check_corruption(corruption)
    severity = _check_severity(severity)
    seed = check_seed(seed)

    squeeze = X.ndim == 3
    x = X.astype(np.float64) / 255.0 if X.dtype == np.uint8 else X.astype(np.float64)
    if squeeze:
        x = x[..., None]
    n, h, w, c = x.shape
    scale = scale_factor(h, w)
    rng = np.random.default_rng(seed)
    logger.debug(
        "corrupt: %s severity %d on %d images of %dx%dx%d (size factor %.4g)",
        corruption,
        severity,
        n,
        h,
        w,
        c,
        scale,
    )
    out = _FUNCTIONS[corruption](x, severity, rng, scale)
    out = np.clip(out, 0.0, 1.0)
    if squeeze:
        out = out[..., 0]
    if X.dtype == np.uint8:
        return (out * 255).astype(np.uint8)
    return out.astype(X.dtype)
