"""Shared machinery of the corruptions: the size rule and numpy/scipy building blocks.

Every corruption function in this package has the signature
``f(x, severity, rng, scale) -> numpy.ndarray`` where ``x`` is a private float64 copy of the batch
of shape ``(n, h, w, c)`` with values in [0, 1] and ``c`` in {1, 3}, ``severity`` is an int in 1..5,
``rng`` a :class:`numpy.random.Generator` and ``scale`` the size factor of :func:`scale_factor`.
It returns a float array of the same shape (values may lie outside [0, 1]; the caller clips).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "CIFAR_SIDE",
    "GRAY_WEIGHTS",
    "bilinear_sample",
    "clipped_zoom",
    "clipped_zoom_matrix",
    "colour_for_channels",
    "gaussian_kernel_sq_norm",
    "gaussian_spatial",
    "gray",
    "hsv_to_rgb",
    "linear_zoom_axis",
    "motion_blur",
    "next_power_of_two",
    "plasma_fractal",
    "quantise_round",
    "quantise_trunc",
    "reflect_index",
    "rgb_to_hsv",
    "scale_factor",
]

#: Side length (pixels) the CIFAR-10-C parameters were chosen for.
CIFAR_SIDE: int = 32

#: Luma weights of OpenCV's ``COLOR_RGB2GRAY`` (ITU-R BT.601), used wherever CIFAR-10-C
#: converts to gray and to map RGB colours onto single-channel images.
GRAY_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)


def scale_factor(height: int, width: int) -> float:
    """Size factor ``s = min(height, width) / 32`` applied to spatial parameters.

    Examples
    --------
    >>> scale_factor(28, 28)
    0.875
    """
    return min(height, width) / CIFAR_SIDE


def next_power_of_two(value: int) -> int:
    """Smallest power of two ``>= value`` (and ``>= 2``)."""
    return max(2, 1 << (int(value) - 1).bit_length())


# --------------------------------------------------------------------------------------------
# 8-bit round trips used where CIFAR-10-C goes through uint8 images


def quantise_trunc(x: np.ndarray) -> np.ndarray:
    """``np.uint8(clip(x, 0, 1) * 255)`` as float64 codes 0..255 (truncation toward zero)."""
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0)


def quantise_round(x: np.ndarray) -> np.ndarray:
    """Nearest 8-bit code of ``x`` in [0, 1], as uint8 (how an image codec stores floats)."""
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Colour


def gray(x: np.ndarray) -> np.ndarray:
    """Luma of an ``(n, h, w, c)`` batch as ``(n, h, w, 1)``; a single channel is its own luma."""
    if x.shape[-1] == 1:
        return x
    w = GRAY_WEIGHTS
    return (w[0] * x[..., 0:1] + w[1] * x[..., 1:2]) + w[2] * x[..., 2:3]


def colour_for_channels(rgb: Sequence[float], channels: int) -> np.ndarray:
    """An RGB colour (0..1) as a per-channel vector: itself for 3 channels, its luma for 1."""
    rgb_arr = np.asarray(rgb, dtype=np.float64)
    if channels == 3:
        return rgb_arr
    return np.array([float(np.dot(GRAY_WEIGHTS, rgb_arr))])


def rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """RGB -> HSV on the last axis, all components in [0, 1] (hue as a fraction of a turn).

    Hue ties follow the usual convention of the scikit-image conversion CIFAR-10-C used
    (blue beats green beats red when several channels share the maximum); gray pixels get
    hue 0 and saturation 0.
    """
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(axis=-1)
    delta = v - x.min(axis=-1)
    has_chroma = delta > 0
    safe_delta = np.where(has_chroma, delta, 1.0)
    safe_v = np.where(v > 0, v, 1.0)
    s = np.where(has_chroma, delta / safe_v, 0.0)
    h = np.where(
        b == v,
        4.0 + (r - g) / safe_delta,
        np.where(g == v, 2.0 + (b - r) / safe_delta, (g - b) / safe_delta),
    )
    h = np.where(has_chroma, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """HSV -> RGB on the last axis (inverse of :func:`rgb_to_hsv`)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    h6 = h * 6.0
    sector = np.floor(h6)
    f = h6 - sector
    sector = sector.astype(np.int64) % 6
    p = v * (1.0 - s)
    q = v * (1.0 - f * s)
    t = v * (1.0 - (1.0 - f) * s)
    # (R, G, B) per sector 0..5 of the hue circle.
    r = np.choose(sector, [v, q, p, p, t, v])
    g = np.choose(sector, [t, v, v, q, p, p])
    b = np.choose(sector, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


# --------------------------------------------------------------------------------------------
# Filters


def gaussian_spatial(
    x: np.ndarray, sigma: float, *, mode: str = "nearest", truncate: float = 4.0
) -> np.ndarray:
    """Gaussian filter over the two spatial axes (1 and 2) of a batch, never across images.

    The defaults match scikit-image's ``gaussian`` as CIFAR-10-C called it (mode 'nearest',
    truncate 4).
    """
    sig = [0.0] * x.ndim
    sig[1] = sig[2] = float(sigma)
    if sigma <= 0:
        return x.astype(np.float64, copy=True)
    return ndimage.gaussian_filter(
        x.astype(np.float64, copy=False), sig, mode=mode, truncate=truncate
    )


def gaussian_kernel_sq_norm(sigma: float, truncate: float) -> float:
    """Sum of squares of SciPy's 1-D discrete Gaussian kernel (radius ``int(truncate*sigma+0.5)``).

    The standard deviation of white noise smoothed by the 2-D (separable) kernel is the noise's
    standard deviation times this number, which is how the size rule keeps noise fields'
    amplitude when it rescales their smoothing.
    """
    if sigma <= 0:
        return 1.0
    radius = int(truncate * sigma + 0.5)
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * (k / sigma) ** 2)
    phi /= phi.sum()
    return float(np.sum(phi**2))


# --------------------------------------------------------------------------------------------
# Resampling


def reflect_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map integer indices into ``0..n-1`` by a boundary rule.

    ``'mirror'`` reflects about the edge pixel without repeating it (OpenCV REFLECT_101,
    ``d c b | a b c d | c b a``), ``'reflect'`` repeats it (``c b a | a b c d | d c b``),
    ``'nearest'`` replicates it.
    """
    if mode == "nearest" or n == 1:
        return np.clip(i, 0, n - 1)
    if mode == "mirror":
        period = 2 * (n - 1)
        i = np.mod(i, period)
        return np.where(i >= n, period - i, i)
    if mode == "reflect":
        period = 2 * n
        i = np.mod(i, period)
        return np.where(i >= n, period - 1 - i, i)
    raise ValueError(f"unknown boundary mode {mode!r}")


def bilinear_sample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
    """Sample each image of ``x`` (n, h, w, c) at float positions, bilinearly.

    ``rows`` and ``cols`` have shape (n, h_out, w_out); outside positions follow ``mode`` (see
    :func:`reflect_index`), which for order-1 interpolation equals SciPy's ``map_coordinates``
    with the same mode and OpenCV's remap with the matching border.
    """
    n, h, w, _ = x.shape
    r0 = np.floor(rows)
    c0 = np.floor(cols)
    fr = (rows - r0)[..., None]
    fc = (cols - c0)[..., None]
    r0 = r0.astype(np.intp)
    c0 = c0.astype(np.intp)
    ra, rb = reflect_index(r0, h, mode), reflect_index(r0 + 1, h, mode)
    ca, cb = reflect_index(c0, w, mode), reflect_index(c0 + 1, w, mode)
    b = np.arange(n)[:, None, None]
    top = x[b, ra, ca] * (1.0 - fc) + x[b, ra, cb] * fc
    bottom = x[b, rb, ca] * (1.0 - fc) + x[b, rb, cb] * fc
    return top * (1.0 - fr) + bottom * fr


def linear_zoom_axis(x: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Order-1 zoom of one axis with the conventions of ``scipy.ndimage.zoom``.

    The output length is ``round(length * factor)`` (Python rounding) and output sample ``o``
    reads input position ``o * (length - 1) / (out - 1)`` (corners aligned, ``grid_mode=False``).
    """
    length = x.shape[axis]
    out = int(round(length * factor))
    if out == length:
        return x
    pos = np.arange(out, dtype=np.float64) * ((length - 1) / (out - 1) if out > 1 else 0.0)
    pos = np.minimum(pos, length - 1)
    lo = np.minimum(np.floor(pos).astype(np.intp), length - 1)
    hi = np.minimum(lo + 1, length - 1)
    frac = pos - lo
    shape = [1] * x.ndim
    shape[axis] = out
    frac = frac.reshape(shape)
    a = np.take(x, lo, axis=axis)
    b = np.take(x, hi, axis=axis)
    return a * (1.0 - frac) + b * frac


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre of every image by ``factor >= 1`` and keep the original size.

    Crop the centred ``ceil(h / factor) x ceil(w / factor)`` window (top-left at
    ``((h - ch) // 2, (w - cw) // 2)``), zoom it by ``factor`` with order-1 interpolation as
    ``scipy.ndimage.zoom`` does, and trim the centred ``h x w`` window. ``x`` is (n, h, w, ...).
    """
    h, w = x.shape[1], x.shape[2]
    ch, cw = int(math.ceil(h / factor)), int(math.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[:, top : top + ch, left : left + cw]
    zoomed = linear_zoom_axis(linear_zoom_axis(crop, 1, factor), 2, factor)
    trim_top = (zoomed.shape[1] - h) // 2
    trim_left = (zoomed.shape[2] - w) // 2
    return zoomed[:, trim_top : trim_top + h, trim_left : trim_left + w]


def clipped_zoom_matrix(length: int, factor: float) -> np.ndarray:
    """The (length, length) matrix of :func:`clipped_zoom` along one axis.

    Row ``i`` holds the interpolation weights that output position ``i`` gives the input
    positions, so ``clipped_zoom`` of an image equals ``A_h @ image @ A_w.T`` per channel.
    """
    eye = np.eye(length)
    crop = int(math.ceil(length / factor))
    top = (length - crop) // 2
    zoomed = linear_zoom_axis(eye[top : top + crop], 0, factor)
    trim = (zoomed.shape[0] - length) // 2
    return zoomed[trim : trim + length]


# --------------------------------------------------------------------------------------------
# ImageMagick-style motion blur


def motion_blur(x: np.ndarray, radius: float, sigma: float, angles_deg: np.ndarray) -> np.ndarray:
    """ImageMagick ``MotionBlurImage`` on a batch, one angle per image, rounded to 8 bits.

    One-sided kernel of width ``2 * ceil(radius) + 1`` with weights ``exp(-i^2 / (2 sigma^2))``
    (normalised), tap ``i`` read at column offset ``ceil(i cos(a) - 0.5)`` and row offset
    ``ceil(i sin(a) - 0.5)``; reads outside the image replicate the edge pixel. The result is
    rounded to the nearest 8-bit level (ImageMagick writes an 8-bit PNG) and returned in [0, 1].

    Parameters
    ----------
    x
        Batch (n, h, w, c) in [0, 1].
    radius, sigma
        Kernel radius and standard deviation in pixels.
    angles_deg
        Shape (n,): blur direction of each image in degrees.
    """
    n, h, w, _ = x.shape
    width = 2 * int(math.ceil(radius)) + 1
    taps = np.arange(width, dtype=np.float64)
    weights = np.exp(-(taps**2) / (2.0 * sigma * sigma))
    weights /= weights.sum()
    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    off_c = np.ceil(taps[None, :] * np.cos(theta)[:, None] - 0.5).astype(np.intp)  # (n, width)
    off_r = np.ceil(taps[None, :] * np.sin(theta)[:, None] - 0.5).astype(np.intp)
    rows = np.arange(h)
    cols = np.arange(w)
    b = np.arange(n)[:, None, None]
    out = np.zeros(x.shape, dtype=np.float64)
    for j in range(width):
        r_idx = np.clip(rows[None, :] + off_r[:, j, None], 0, h - 1)  # (n, h)
        c_idx = np.clip(cols[None, :] + off_c[:, j, None], 0, w - 1)  # (n, w)
        out += weights[j] * x[b, r_idx[:, :, None], c_idx[:, None, :]]
    return np.floor(np.clip(out, 0.0, 1.0) * 255.0 + 0.5) / 255.0


# --------------------------------------------------------------------------------------------
# Diamond-square plasma fractal


def plasma_fractal(
    n: int, mapsize: int, wibble_decay: float, rng: np.random.Generator
) -> np.ndarray:
    """``n`` diamond-square plasma fractals of shape (mapsize, mapsize), each min-max scaled to [0, 1].

    The map is a torus: corner (0, 0) starts at 0; per level the square step sets each square's
    centre and the diamond step each edge midpoint to the mean of its four neighbours plus
    ``wibble * U(-wibble, wibble)``; the wibble starts at 100 and is divided by ``wibble_decay``
    after every level. ``mapsize`` must be a power of two.
    """
    if mapsize < 2 or mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two >= 2, got {mapsize}")
    m = np.zeros((n, mapsize, mapsize), dtype=np.float64)
    step = mapsize
    wibble = 100.0

    def jitter(shape: tuple[int, ...]) -> np.ndarray:
        return wibble * rng.uniform(-wibble, wibble, size=shape)

    while step >= 2:
        half = step // 2
        corners = m[:, ::step, ::step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        m[:, half::step, half::step] = square / 4.0 + jitter(square.shape)
        centres = m[:, half::step, half::step]
        # Midpoints of horizontal edges: corners left/right, centres below/above.
        horiz = corners + np.roll(corners, -1, axis=2) + centres + np.roll(centres, 1, axis=1)
        m[:, ::step, half::step] = horiz / 4.0 + jitter(horiz.shape)
        # Midpoints of vertical edges: corners above/below, centres right/left.
        vert = corners + np.roll(corners, -1, axis=1) + centres + np.roll(centres, 1, axis=2)
        m[:, half::step, ::step] = vert / 4.0 + jitter(vert.shape)
        step //= 2
        wibble /= wibble_decay
    m -= m.min(axis=(1, 2), keepdims=True)
    top = m.max(axis=(1, 2), keepdims=True)
    return m / np.where(top > 0, top, 1.0)
