"""Digital corruptions: contrast, elastic_transform, pixelate, jpeg_compression, spatter, saturate."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
from scipy import ndimage

from ._core import (
    bilinear_sample,
    colour_for_channels,
    gaussian_kernel_sq_norm,
    gaussian_spatial,
    hsv_to_rgb,
    quantise_round,
    quantise_trunc,
    rgb_to_hsv,
)

__all__ = [
    "canny_edges",
    "contrast",
    "elastic_transform",
    "equalize_hist",
    "jpeg_compression",
    "pixelate",
    "pixelate_size",
    "saturate",
    "spatter",
]

# CIFAR-10-C parameters, severity 1..5 (pixels at 32x32).
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
# elastic_transform: (alpha, sigma, affine jitter), pixels
ELASTIC = (
    (0.0, 0.0, 2.56),
    (1.6, 6.4, 2.24),
    (2.56, 1.92, 1.92),
    (3.2, 1.28, 1.6),
    (3.2, 0.96, 0.96),
)
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
JPEG_QUALITY = (80, 65, 58, 50, 40)
# spatter: (loc, scale, sigma, threshold, k, mode)
SPATTER = (
    (0.62, 0.1, 0.7, 0.70, 0.5, "water"),
    (0.65, 0.1, 0.8, 0.70, 0.5, "water"),
    (0.65, 0.3, 1.0, 0.69, 0.5, "water"),
    (0.65, 0.1, 0.7, 0.69, 0.6, "mud"),
    (0.65, 0.1, 0.5, 0.68, 0.6, "mud"),
)
WATER_COLOUR = (175 / 255.0, 238 / 255.0, 238 / 255.0)  # pale turquoise, RGB
MUD_COLOUR = (63 / 255.0, 42 / 255.0, 20 / 255.0)  # brown, RGB
SATURATE = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))  # (multiplier, offset)

_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_EMBOSS = np.array([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
_CANNY_LOW, _CANNY_HIGH = 50.0, 150.0
_WATER_DISTANCE_CAP = 20.0  # pixels at 32x32


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """``(x - mean) * c + mean`` with the mean of each image and channel."""
    c = CONTRAST[severity - 1]
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * c + means


def elastic_transform(
    x: np.ndarray, severity: int, rng: np.random.Generator, scale: float
) -> np.ndarray:
    """Random affine jitter, then a smooth random displacement field (CIFAR-10-C's two steps).

    Affine: the points ``centre + (q, q)``, ``centre + (q, -q)``, ``centre - (q, q)`` with
    ``q = min(h, w) // 3`` are jittered by ``U(-a, a)`` per coordinate and the image is warped
    by the affine map taking the points to their jittered positions (bilinear, REFLECT_101).
    Elastic: ``dx, dy = gaussian(U(-1, 1), sigma, mode='reflect', truncate=3) * alpha`` and the
    image is sampled at ``(row + dy, col + dx)`` (bilinear, half-sample reflection).
    At other sizes ``a`` and ``sigma`` scale with the size factor ``s`` and ``alpha`` with
    ``s`` times the ratio of the smoothing kernels' L2 norms, so that the displacement's
    standard deviation and correlation length are both ``s`` times CIFAR-10-C's.
    """
    alpha, sigma, affine = ELASTIC[severity - 1]
    n, h, w, _ = x.shape
    cx, cy, q = w // 2, h // 2, min(h, w) // 3
    src = np.array([[cx + q, cy + q], [cx + q, cy - q], [cx - q, cy - q]], dtype=np.float64)
    dst = src[None] + rng.uniform(-affine * scale, affine * scale, size=(n, 3, 2))
    # Inverse map: output pixel (col, row) reads the input at [col, row, 1] @ coef.
    coef = np.linalg.solve(
        np.concatenate([dst, np.ones((n, 3, 1))], axis=2), np.broadcast_to(src, (n, 3, 2))
    )
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)

    def mapped(k: int) -> np.ndarray:
        return (
            cols[None] * coef[:, 0, k, None, None]
            + rows[None] * coef[:, 1, k, None, None]
            + coef[:, 2, k, None, None]
        )

    warped = bilinear_sample(x, mapped(1), mapped(0), "mirror")
    if alpha == 0:
        return warped
    sigma_s = sigma * scale
    amplitude = (
        alpha * scale * gaussian_kernel_sq_norm(sigma, 3.0) / gaussian_kernel_sq_norm(sigma_s, 3.0)
    )
    dx = gaussian_spatial(
        rng.uniform(-1.0, 1.0, size=(n, h, w)), sigma_s, mode="reflect", truncate=3.0
    )
    dy = gaussian_spatial(
        rng.uniform(-1.0, 1.0, size=(n, h, w)), sigma_s, mode="reflect", truncate=3.0
    )
    return bilinear_sample(
        warped, rows[None] + amplitude * dy, cols[None] + amplitude * dx, "reflect"
    )


def pixelate_size(height: int, width: int, severity: int) -> tuple[int, int]:
    """Intermediate (width, height) of pixelate: ``int(side * c)``, at least 1.

    Examples
    --------
    >>> [pixelate_size(32, 32, s)[0] for s in range(1, 6)]
    [30, 28, 27, 24, 20]
    """
    c = PIXELATE[severity - 1]
    return max(1, int(width * c)), max(1, int(height * c))


def _pil_round_trip(x: np.ndarray, process) -> np.ndarray:
    """Apply ``process(PIL image) -> PIL image`` to every image of ``x`` in 8 bits ('RGB' or 'L')."""
    codes = quantise_round(x)
    n, h, w, c = codes.shape
    out = np.empty_like(codes)
    for i in range(n):
        img = Image.fromarray(codes[i] if c == 3 else codes[i, :, :, 0])
        out[i] = np.asarray(process(img)).reshape(h, w, c)
    return out / 255.0


def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """PIL BOX resize down to ``int(side * c)`` and BOX resize back (in 8 bits)."""
    h, w = x.shape[1], x.shape[2]
    small = pixelate_size(h, w, severity)
    box = Image.BOX  # (Image.Resampling.BOX needs Pillow >= 9.1; the constant works in all)
    return _pil_round_trip(x, lambda img: img.resize(small, box).resize((w, h), box))


def jpeg_compression(
    x: np.ndarray, severity: int, rng: np.random.Generator, scale: float
) -> np.ndarray:
    """PIL JPEG encode at the severity's quality and decode (Pillow's default subsampling)."""
    quality = JPEG_QUALITY[severity - 1]

    def round_trip(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as decoded:
            decoded.load()
            return decoded.copy()

    return _pil_round_trip(x, round_trip)


def saturate(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """HSV saturation ``S -> clip(S * mult + add)``; single-channel images are returned unchanged.

    A single-channel image has no hue; CIFAR-10-C's conversion would give its gray pixels hue 0
    (red) and, at severities 4-5, tint them red. That tint is an artefact of the RGB
    conversion, so single-channel input is returned as it is (this corruption is the identity
    on grayscale).
    """
    if x.shape[-1] == 1:
        return x.copy()
    mult, add = SATURATE[severity - 1]
    hsv = rgb_to_hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * mult + add, 0.0, 1.0)
    return hsv_to_rgb(hsv)


# --------------------------------------------------------------------------------------------
# spatter and its OpenCV stand-ins


def canny_edges(img: np.ndarray, low: float, high: float) -> np.ndarray:
    """Canny edges of each 8-bit image in ``img`` (n, h, w), after OpenCV's ``Canny(img, low, high)``.

    3x3 Sobel gradients (edge pixels replicated), L1 magnitude ``|gx| + |gy|``, non-maximum
    suppression across the gradient direction quantised to 0/45/90/135 degrees (strict on one
    side, non-strict on the other, zero magnitude outside the image), then hysteresis: pixels
    above ``low`` that survive suppression are edges if 8-connected to one above ``high``.
    """
    img = img.astype(np.float64, copy=False)
    gx = ndimage.correlate(img, _SOBEL_X[None], mode="nearest")
    gy = ndimage.correlate(img, _SOBEL_X.T[None], mode="nearest")
    ax, ay = np.abs(gx), np.abs(gy)
    mag = ax + ay
    p = np.pad(mag, ((0, 0), (1, 1), (1, 1)))
    left, right = p[:, 1:-1, :-2], p[:, 1:-1, 2:]
    up, down = p[:, :-2, 1:-1], p[:, 2:, 1:-1]
    up_left, down_right = p[:, :-2, :-2], p[:, 2:, 2:]
    up_right, down_left = p[:, :-2, 2:], p[:, 2:, :-2]
    horizontal = ay < ax * math.tan(math.pi / 8)
    vertical = ~horizontal & (ay > ax * math.tan(3 * math.pi / 8))
    diagonal = ~horizontal & ~vertical
    same_sign = (gx >= 0) == (gy >= 0)
    maximum = (
        (horizontal & (mag > left) & (mag >= right))
        | (vertical & (mag > up) & (mag >= down))
        | (diagonal & same_sign & (mag > up_left) & (mag > down_right))
        | (diagonal & ~same_sign & (mag > up_right) & (mag > down_left))
    )
    candidate = maximum & (mag > low)
    strong = candidate & (mag > high)
    if not strong.any():
        return strong
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connectivity inside an image, never across images
    labels, _ = ndimage.label(candidate, structure=structure)
    keep = np.zeros(labels.max() + 1, dtype=bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    return keep[labels]


def equalize_hist(codes: np.ndarray) -> np.ndarray:
    """OpenCV-style histogram equalisation of each 8-bit image in ``codes`` (n, h, w).

    ``lut[v] = round(255 * (cdf(v) - cdf(v0)) / (pixels - count(v0)))`` with ``v0`` the lowest
    level present; an image of one level is left as it is.
    """
    n = codes.shape[0]
    flat = codes.reshape(n, -1).astype(np.intp)
    total = flat.shape[1]
    hist = np.bincount((flat + 256 * np.arange(n)[:, None]).ravel(), minlength=256 * n)
    hist = hist.reshape(n, 256)
    cdf = np.cumsum(hist, axis=1)
    first = np.argmax(hist > 0, axis=1)
    first_count = hist[np.arange(n), first]
    denom = total - first_count
    scale = np.float32(255.0) / np.maximum(denom, 1).astype(np.float32)
    lut = np.rint((cdf - first_count[:, None]).astype(np.float32) * scale[:, None])
    lut = np.clip(lut, 0, 255).astype(np.float64)
    constant = denom == 0
    if constant.any():
        lut[constant] = np.arange(256, dtype=np.float64)
    return np.take_along_axis(lut, flat, axis=1).reshape(codes.shape)


def _box3(img: np.ndarray, size: int) -> np.ndarray:
    """Mean over a ``size x size`` window per image (REFLECT_101 border), like ``cv2.blur``."""
    return ndimage.uniform_filter(img, size=(1, size, size), mode="mirror")


def _water_layer(liquid: np.ndarray, scale: float) -> np.ndarray:
    """The water-drop brightness map (n, h, w) of spatter's 'water' mode, before normalising."""
    lu8 = quantise_trunc(liquid)
    edges = canny_edges(lu8, _CANNY_LOW, _CANNY_HIGH)
    cap = _WATER_DISTANCE_CAP * scale
    if edges.any():
        # Distance to the nearest edge pixel of the same image: the batch axis is given a huge
        # spacing so that other images' edges are never nearer than the cap.
        dist = ndimage.distance_transform_edt(~edges, sampling=(1e6, 1.0, 1.0))
    else:
        dist = np.full(edges.shape, cap)
    dist = np.minimum(dist, cap)
    box = 2 * max(1, round(scale)) + 1
    dist = np.clip(np.floor(_box3(dist, box)), 0, 255)
    dist = equalize_hist(dist)
    dist = np.clip(np.rint(ndimage.correlate(dist, _EMBOSS[None], mode="mirror")), 0, 255)
    dist = np.rint(_box3(dist, box))
    return lu8 * dist


def spatter(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Water drops (severities 1-3) or mud (4-5) from a thresholded smooth noise layer.

    Liquid layer: ``N(loc, scale)`` smoothed by a Gaussian (sigma times the size factor, noise
    scale adjusted so the smoothed field keeps CIFAR-10-C's standard deviation), values below
    the threshold set to 0. Water: Canny edges of the 8-bit layer, distance to the nearest
    edge (capped at 20 px times the size factor), box blur, histogram equalisation, emboss,
    box blur; the layer times this map, normalised to max ``k``, adds pale turquoise. Mud: the
    layer's support blurred by ``k``, kept where >= 0.8, replaces the image by brown there.
    Single-channel images get the colours' luma.
    """
    loc, sd, sigma, threshold, k, mode = SPATTER[severity - 1]
    n, h, w, c = x.shape
    sigma_s = sigma * scale
    sd_s = sd * gaussian_kernel_sq_norm(sigma, 4.0) / gaussian_kernel_sq_norm(sigma_s, 4.0)
    liquid = loc + sd_s * gaussian_spatial(rng.standard_normal((n, h, w)), sigma_s)
    liquid = np.where(liquid < threshold, 0.0, liquid)
    if mode == "water":
        m = _water_layer(liquid, scale)
        peak = m.max(axis=(1, 2), keepdims=True)
        m = np.where(peak > 0, m / np.where(peak > 0, peak, 1.0), 0.0) * k
        return x + m[..., None] * colour_for_channels(WATER_COLOUR, c)
    mask = gaussian_spatial((liquid > threshold).astype(np.float64), k * scale)
    mask = np.where(mask < 0.8, 0.0, mask)[..., None]
    return x * (1.0 - mask) + mask * colour_for_channels(MUD_COLOUR, c)
