"""Blur corruptions: defocus_blur, glass_blur, motion_blur, zoom_blur, gaussian_blur."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ._core import clipped_zoom_matrix, gaussian_spatial, motion_blur, quantise_trunc

__all__ = [
    "defocus_blur",
    "defocus_kernel",
    "gaussian_blur",
    "glass_blur",
    "glass_shuffle",
    "motion_blur_corruption",
    "zoom_blur",
    "zoom_factors",
]

# CIFAR-10-C parameters, severity 1..5 (pixels at 32x32).
DEFOCUS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))  # (radius, alias sigma)
GLASS = (
    (0.05, 1, 1),
    (0.25, 1, 1),
    (0.4, 1, 1),
    (0.25, 1, 2),
    (0.4, 1, 2),
)  # (sigma, delta, iters)
MOTION = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))  # (radius, sigma)
MOTION_ANGLE = (-45.0, 45.0)
ZOOM_END = (1.06, 1.11, 1.16, 1.21, 1.26)  # factors np.arange(1, end, 0.01)
GAUSSIAN_BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)

# Sub-samples per pixel side for the anti-aliased disk used at sizes other than 32.
_DISK_SUPERSAMPLING = 16


def defocus_kernel(radius: float, alias_sigma: float, *, antialias: bool = False) -> np.ndarray:
    """The defocus kernel: a disk of ``radius`` smoothed by a small Gaussian, summing to 1.

    As in CIFAR-10-C: on a 17x17 grid (offsets -8..8; ``-ceil(r)..ceil(r)`` when ``r > 8``) mark
    the points with ``X^2 + Y^2 <= r^2``, normalise, then smooth with a 3x3 (5x5 when ``r > 8``)
    Gaussian of standard deviation ``alias_sigma`` with a REFLECT_101 border. With
    ``antialias=True`` each grid point is weighted by the fraction of its pixel square that lies
    in the disk (16x16 sub-samples), so the kernel grows continuously with the radius; the
    size rule uses this at sizes other than 32. All-zero border rows and columns are trimmed.

    Examples
    --------
    >>> k = defocus_kernel(1.0, 0.2)   # CIFAR-10-C severity 4: a 5-pixel plus
    >>> k.shape, round(float(k.sum()), 6)
    ((5, 5), 1.0)
    """
    half = 8 if radius <= 8 else int(math.ceil(radius))
    ksize = 3 if radius <= 8 else 5
    coords = np.arange(-half, half + 1, dtype=np.float64)
    if antialias:
        sub = _DISK_SUPERSAMPLING
        offsets = (np.arange(sub) + 0.5) / sub - 0.5
        pts = (coords[:, None] + offsets[None, :]).ravel()
        inside = pts[:, None] ** 2 + pts[None, :] ** 2 <= radius**2
        disk = inside.reshape(coords.size, sub, coords.size, sub).mean(axis=(1, 3))
    else:
        disk = (coords[:, None] ** 2 + coords[None, :] ** 2 <= radius**2).astype(np.float64)
    if disk.sum() == 0:  # a radius far below one pixel: the identity
        disk[half, half] = 1.0
    disk = (disk / disk.sum()).astype(np.float32)  # CIFAR-10-C builds this kernel in float32
    k = np.arange(ksize, dtype=np.float64) - ksize // 2
    g = np.exp(-(k**2) / (2.0 * alias_sigma**2))
    g /= g.sum()
    kernel = ndimage.correlate1d(disk.astype(np.float64), g, axis=0, mode="mirror")
    kernel = ndimage.correlate1d(kernel, g, axis=1, mode="mirror")
    kernel = kernel.astype(np.float32).astype(np.float64)
    # Trim symmetric all-zero borders (the kernel is symmetric, so its centre stays put).
    while kernel.shape[0] > 1 and not kernel[0].any() and not kernel[:, 0].any():
        kernel = kernel[1:-1, 1:-1]
    return kernel


def defocus_blur(
    x: np.ndarray, severity: int, rng: np.random.Generator, scale: float
) -> np.ndarray:
    """Correlate every channel with :func:`defocus_kernel` (REFLECT_101 border)."""
    radius, alias = DEFOCUS[severity - 1]
    kernel = defocus_kernel(radius * scale, alias * scale, antialias=scale != 1.0)
    return ndimage.correlate(x, kernel[None, :, :, None], mode="mirror")


def glass_shuffle(codes: np.ndarray, delta: int, offsets: np.ndarray) -> np.ndarray:
    """One pass of glass_blur's sequential local pixel copying, for all images at once.

    Positions are visited row ``h`` from ``height - delta`` down to ``delta + 1`` and, inside,
    column ``w`` from ``width - delta`` down to ``delta + 1``; at each, pixel ``(h + dy, w + dx)``
    is copied into ``(h, w)`` (CIFAR-10-C's tuple "swap" copies; it does not exchange), so a
    later step may read a pixel an earlier step wrote. The loop over positions is sequential,
    every step acting on all images with their own offsets.

    Parameters
    ----------
    codes
        (n, h, w, c) array; a modified copy is returned.
    delta
        Neighbourhood size; offsets lie in ``-delta .. delta - 1``.
    offsets
        Integer array (n, positions, 2) of ``(dx, dy)`` per image and visited position.
    """
    n, h, w, c = codes.shape
    rows = np.arange(h - delta, delta, -1)
    cols = np.arange(w - delta, delta, -1)
    hh, ww = np.meshgrid(rows, cols, indexing="ij")
    hh, ww = hh.ravel(), ww.ravel()
    if offsets.shape != (n, hh.size, 2):
        raise ValueError(f"offsets must have shape {(n, hh.size, 2)}, got {offsets.shape}")
    dst = hh * w + ww
    src = ((hh[None, :] + offsets[..., 1]) * w + (ww[None, :] + offsets[..., 0])).T.copy()
    flat = codes.reshape(n, h * w, c).copy()
    batch = np.arange(n)
    for k in range(dst.size):
        flat[:, dst[k]] = flat[batch, src[k]]
    return flat.reshape(n, h, w, c)


def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Gaussian blur, 8-bit truncation, local pixel copying, Gaussian blur again."""
    sigma, delta, iterations = GLASS[severity - 1]
    sigma = sigma * scale
    delta = max(1, round(delta * scale))
    n, h, w, _ = x.shape
    codes = quantise_trunc(gaussian_spatial(x, sigma))
    positions = max(0, h - 2 * delta) * max(0, w - 2 * delta)
    for _ in range(iterations):
        offsets = rng.integers(-delta, delta, size=(n, positions, 2))
        codes = glass_shuffle(codes, delta, offsets)
    return gaussian_spatial(codes / 255.0, sigma)


def motion_blur_corruption(
    x: np.ndarray, severity: int, rng: np.random.Generator, scale: float
) -> np.ndarray:
    """ImageMagick-style motion blur, angle ~ U(-45, 45) degrees per image."""
    radius, sigma = MOTION[severity - 1]
    angles = rng.uniform(*MOTION_ANGLE, size=x.shape[0])
    return motion_blur(x, radius * scale, sigma * scale, angles)


def zoom_factors(severity: int) -> np.ndarray:
    """CIFAR-10-C's zoom factors ``np.arange(1, end, 0.01)``: 7, 12, 16, 21, 26 of them.

    Examples
    --------
    >>> [len(zoom_factors(s)) for s in range(1, 6)]
    [7, 12, 16, 21, 26]
    """
    return np.arange(1.0, ZOOM_END[severity - 1], 0.01)


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Mean of the image and its centre zooms by every factor (float32, as CIFAR-10-C)."""
    n, h, w, c = x.shape
    # Each zoom is linear and separable: rows then columns, each one matrix product over the
    # whole batch, with the planes laid out as (h, n * c, w) so that both products are single
    # BLAS calls. Accumulation in float32, as CIFAR-10-C.
    planes = np.ascontiguousarray(x.transpose(1, 0, 3, 2), dtype=np.float32)  # (h, n, c, w)
    planes = planes.reshape(h, n * c, w)
    planes64 = planes.astype(np.float64).reshape(h, n * c * w)
    factors = zoom_factors(severity)
    acc = np.zeros_like(planes)
    for z in factors:
        rows = clipped_zoom_matrix(h, float(z)) @ planes64  # (h, n*c*w)
        zoomed = rows.reshape(h * n * c, w) @ clipped_zoom_matrix(w, float(z)).T
        acc += zoomed.reshape(h, n * c, w).astype(np.float32)
    out = (planes + acc) / np.float32(len(factors) + 1)
    return out.reshape(h, n, c, w).transpose(1, 0, 3, 2)


def gaussian_blur(
    x: np.ndarray, severity: int, rng: np.random.Generator, scale: float
) -> np.ndarray:
    """Gaussian filter over the spatial axes (mode 'nearest', truncate 4)."""
    return gaussian_spatial(x, GAUSSIAN_BLUR_SIGMA[severity - 1] * scale)
