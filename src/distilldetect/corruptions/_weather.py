"""Weather corruptions: snow, frost, fog, brightness."""

from __future__ import annotations

import math

import numpy as np
from scipy import fft

from ._core import (
    clipped_zoom,
    gray,
    hsv_to_rgb,
    motion_blur,
    next_power_of_two,
    plasma_fractal,
    quantise_trunc,
    rgb_to_hsv,
)

__all__ = ["brightness", "fog", "frost", "frost_textures", "snow"]

# CIFAR-10-C parameters, severity 1..5 (pixels at 32x32).
# snow: (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
SNOW = (
    (0.10, 0.2, 1.00, 0.60, 8, 3, 0.95),
    (0.10, 0.2, 1.00, 0.50, 10, 4, 0.90),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.90),
    (0.25, 0.3, 2.25, 0.60, 12, 6, 0.85),
    (0.30, 0.3, 1.25, 0.65, 14, 12, 0.80),
)
SNOW_ANGLE = (-135.0, -45.0)
FROST = ((1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # (image, frost) weights
FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))  # (strength, wibble decay)
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)

# Procedural frost: tint of the ice (RGB multipliers; blue-white) and feature wavelengths in
# pixels at 32x32 (multiplied by the size factor).
FROST_TINT = (0.84, 0.92, 1.0)
_FROST_HAZE_WAVELENGTH = 24.0
_FROST_CRYSTAL_WAVELENGTH = 7.0
_FROST_NEEDLE_WAVELENGTH = 3.5


def snow(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Motion-blurred snow flakes over a whitened image (CIFAR-10-C's algorithm).

    Flake layer: ``N(loc, scale)`` per pixel, centre-zoomed by ``zoom`` (times the size factor,
    at least 1: flakes cannot be smaller than a pixel), values below the threshold set to 0,
    truncated to 8 bits and motion-blurred (radius and sigma times the size factor, angle
    ``U(-135, -45)`` degrees, rounded to 8 bits). Image: ``blend * x + (1 - blend) *
    max(x, 1.5 * gray(x) + 0.5)``. Result: image + layer + layer rotated by 180 degrees.
    """
    loc, sd, zoom, threshold, mb_radius, mb_sigma, blend = SNOW[severity - 1]
    n, h, w, _ = x.shape
    layer = rng.normal(loc, sd, size=(n, h, w, 1))
    layer = clipped_zoom(layer, max(1.0, zoom * scale))
    layer = np.where(layer < threshold, 0.0, layer)
    layer = quantise_trunc(layer) / 255.0
    angles = rng.uniform(*SNOW_ANGLE, size=n)
    flakes = motion_blur(layer, mb_radius * scale, mb_sigma * scale, angles)
    whitened = blend * x + (1.0 - blend) * np.maximum(x, gray(x) * 1.5 + 0.5)
    return whitened + flakes + np.rot90(flakes, 2, axes=(1, 2))


_FROST_DIRECTIONS = 12  # needle directions, 15 degrees apart (three families 60 degrees apart)


def _band_filter(
    shape: tuple[int, int],
    wavelength: float,
    bandwidth: float,
    orientation: float | None = None,
    spread: float = 0.3,
) -> np.ndarray:
    """Real-FFT filter (H, W//2+1): a log-normal ring around frequency ``1 / wavelength``.

    With ``orientation`` (radians) the ring is also narrowed around that direction of the
    frequency vector, which turns filtered noise into parallel streaks.
    """
    hh, ww = shape
    fy = np.fft.fftfreq(hh)[:, None]
    fx = np.fft.rfftfreq(ww)[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = 1.0
    filt = np.exp(-0.5 * (np.log(f * wavelength) / bandwidth) ** 2)
    filt[0, 0] = 0.0
    if orientation is not None:
        filt = filt * np.exp(-0.5 * (np.sin(np.arctan2(fy, fx) - orientation) / spread) ** 2)
    return filt.astype(np.float32)


def _filtered_noise(
    n: int, filt: np.ndarray, shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """``n`` white-noise fields filtered by ``filt`` ((H, W//2+1) or one per field), unit std each.

    Single precision: plenty for an 8-bit texture, and twice as fast.
    """
    noise = rng.standard_normal((n, *shape), dtype=np.float32)
    field = fft.irfft2(fft.rfft2(noise) * filt, s=shape)
    return field / (field.std(axis=(1, 2), keepdims=True) + np.float32(1e-12))


def _ridges(field: np.ndarray, sharpness: int) -> np.ndarray:
    """Thin bright lines along the zero crossings of a unit-std field, in [0, 1]."""
    return np.clip(np.float32(1.0) - np.abs(field) / np.float32(1.5), 0.0, 1.0) ** sharpness


def frost_textures(
    n: int, height: int, width: int, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Procedural frost textures (n, height, width, 3) on the 8-bit grid, values in [0, 1].

    A stand-in for CIFAR-10-C's frost photographs (which are not shipped): a slowly varying
    ice "coverage" (band noise around 24 px), a network of crystal edges (ridges of band noise
    around 7 px) and three families of fine needles 60 degrees apart (ridges of oriented
    noise around 3.5 px; random base direction in 15-degree steps; each family dominates its
    own patches), composed to blue-white ice on a darker background (mean level about 0.5),
    tinted by :data:`FROST_TINT`. Wavelengths are in pixels at 32x32 and scale with the size
    factor. Textures are drawn on a canvas 1.5 times the image size (so the periodic noise
    does not wrap inside the image) and cropped, like CIFAR-10-C's random crop.
    """
    canvas = (height + height // 2, width + width // 2)
    s = max(scale, 1e-3)
    coverage = _filtered_noise(
        n, _band_filter(canvas, _FROST_HAZE_WAVELENGTH * s, 0.7), canvas, rng
    )
    crystals = _filtered_noise(
        n, _band_filter(canvas, _FROST_CRYSTAL_WAVELENGTH * s, 0.45), canvas, rng
    )
    domains = _filtered_noise(
        n, _band_filter(canvas, _FROST_HAZE_WAVELENGTH * 0.6 * s, 0.6), canvas, rng
    )
    directional = np.stack(
        [
            _band_filter(
                canvas,
                _FROST_NEEDLE_WAVELENGTH * s,
                0.35,
                orientation=k * math.pi / _FROST_DIRECTIONS,
                spread=0.12,
            )
            for k in range(_FROST_DIRECTIONS)
        ]
    )
    base = rng.integers(0, _FROST_DIRECTIONS, size=n)
    needles = np.zeros((n, *canvas), dtype=np.float32)
    for family in range(3):
        direction = (base + family * _FROST_DIRECTIONS // 3) % _FROST_DIRECTIONS
        streaks = _filtered_noise(n, directional[direction], canvas, rng)
        weight = np.clip(1.0 - np.abs(domains - np.float32((family - 1) * 1.1)), 0.0, 1.0)
        needles = np.maximum(needles, weight * _ridges(streaks, 4))
    ice = 1.0 / (1.0 + np.exp(np.float32(-1.6) * coverage))  # coverage in (0, 1)
    tex = 0.26 + 0.34 * ice + 0.16 * _ridges(crystals, 3) + 0.42 * needles * (0.4 + ice)
    tex = tex[:, :height, :width, None].astype(np.float64) * np.asarray(FROST_TINT)
    return quantise_trunc(tex) / 255.0


def frost(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """``a_img * x + a_frost * texture`` with a procedural frost texture per image.

    Not byte-faithful to CIFAR-10-C, whose textures are photographs: see
    :func:`frost_textures`. Single-channel images get the textures' luma.
    """
    a_img, a_frost = FROST[severity - 1]
    n, h, w, c = x.shape
    tex = frost_textures(n, h, w, scale, rng)
    if c == 1:
        tex = quantise_trunc(gray(tex)) / 255.0
    return a_img * x + a_frost * tex


def fog(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Add a plasma fractal and rescale: ``(x + c P) * m / (m + c)`` with ``m = max(x)`` per image.

    The fractal is drawn on the smallest power-of-two square covering the image (32 for
    CIFAR, also for 28x28) and its top-left corner is used.
    """
    strength, decay = FOG[severity - 1]
    n, h, w, _ = x.shape
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    mapsize = next_power_of_two(max(h, w))
    plasma = plasma_fractal(n, mapsize, decay, rng)[:, :h, :w, None]
    return (x + strength * plasma) * peak / (peak + strength)


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Add ``c`` to the HSV value channel (clipped to [0, 1]).

    For a single channel the value is the gray level itself, so it becomes ``min(x + c, 1)``.
    """
    c = BRIGHTNESS[severity - 1]
    if x.shape[-1] == 1:
        return np.clip(x + c, 0.0, 1.0)
    hsv = rgb_to_hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0.0, 1.0)
    return hsv_to_rgb(hsv)
