"""Tests of distilldetect.corruptions: the contract of every type x severity, exact checks
against hand-computed values and independent reference implementations, bad inputs, and a
slow check on real Fashion-MNIST that a trained classifier loses accuracy with severity."""

from __future__ import annotations

import colorsys
import gzip
import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from distilldetect.corruptions import (
    CORRUPTIONS,
    SUBSETS,
    _blur,
    _core,
    _digital,
    _weather,
    corrupt,
    get_corruption_names,
)

SEVERITIES = (1, 2, 3, 4, 5)
DETERMINISTIC = {
    "defocus_blur",
    "zoom_blur",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
    "gaussian_blur",
    "saturate",
}
RANDOM = [name for name in CORRUPTIONS if name not in DETERMINISTIC]
# Types whose damage (mean absolute difference to the clean image) is not expected to grow
# from severity 1 to 5 with CIFAR-10-C's parameters:
# - saturate: severities 1-2 desaturate (x0.3, x0.1), 3-5 saturate (x1.5 .. x2.5 + 0.2);
# - elastic_transform: the affine jitter shrinks (2.56 -> 0.96 px) while the elastic field
#   grows (alpha 0 -> 3.2 px, sigma 0.96), so pixel differences fall with severity.
NOT_MONOTONE = {"saturate", "elastic_transform"}
# Types whose parameters all grow with severity: damage must increase at every step.
STRICTLY_MONOTONE = [
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "defocus_blur",
    "zoom_blur",
    "fog",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
    "gaussian_blur",
]
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def natural_images(n: int, h: int, w: int, c: int, seed: int) -> np.ndarray:
    """Seeded uint8 images with smooth shading, fine texture, a disc and a bar (n, h, w, c)."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.random((n, h, w, c)), (0, h / 8, w / 8, 0), mode="wrap")
    fine = ndimage.gaussian_filter(rng.random((n, h, w, c)), (0, 1, 1, 0), mode="wrap")
    lo = coarse.min(axis=(1, 2, 3), keepdims=True)
    hi = coarse.max(axis=(1, 2, 3), keepdims=True)
    img = 0.15 + 0.6 * (coarse - lo) / (hi - lo) + 0.8 * (fine - fine.mean())
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * (h, w)
        r = rng.uniform(0.15, 0.3) * min(h, w)
        img[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 1, c)
        top = rng.integers(0, h - 4)
        img[i, top : top + 3, :] = rng.uniform(0, 1, c)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return natural_images(3, 32, 32, 3, seed=0)


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return natural_images(3, 28, 28, 1, seed=1)[..., 0]


# ------------------------------------------------------------------------------------------
# Contract: every type x severity, RGB 32x32 and grayscale 28x28


@pytest.mark.parametrize("kind", ["rgb", "gray"])
@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_contract(name, severity, kind, rgb, gray):
    X = rgb if kind == "rgb" else gray
    before = X.copy()
    out = corrupt(X, name, severity, seed=7)
    assert out.shape == X.shape
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(X, before)  # not modified in place
    np.testing.assert_array_equal(corrupt(X, name, severity, seed=7), out)  # reproducible
    other = corrupt(X, name, severity, seed=8)
    if name in DETERMINISTIC:
        np.testing.assert_array_equal(other, out)
    else:
        assert not np.array_equal(other, out), "different seeds should give different output"
    # Float path: same algorithm, values in [0, 1], input untouched, agrees with uint8 path.
    Xf = X / 255.0
    Xf_before = Xf.copy()
    outf = corrupt(Xf, name, severity, seed=7)
    assert outf.shape == X.shape
    assert outf.dtype == np.float64
    assert 0.0 <= outf.min() and outf.max() <= 1.0
    np.testing.assert_array_equal(Xf, Xf_before)
    np.testing.assert_array_equal((outf * 255).astype(np.uint8), out)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_float32_and_channel_axis(name, gray):
    X = (gray[..., None] / 255.0).astype(np.float32)  # (n, h, w, 1)
    out = corrupt(X, name, 3, seed=0)
    assert out.shape == X.shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all() and 0.0 <= out.min() and out.max() <= 1.0
    # (n, h, w) and (n, h, w, 1) are the same images.
    flat = corrupt(gray, name, 3, seed=0)
    np.testing.assert_array_equal(corrupt(gray[..., None], name, 3, seed=0)[..., 0], flat)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_other_sizes(name):
    """Non-square and larger images (the size rule), severity 5."""
    for X in (natural_images(2, 20, 36, 3, seed=2), natural_images(1, 64, 64, 1, seed=3)[..., 0]):
        out = corrupt(X, name, 5, seed=0)
        assert out.shape == X.shape and out.dtype == np.uint8


@pytest.mark.parametrize("name", RANDOM)
def test_images_in_a_batch_get_their_own_draws(name, rgb):
    X = np.repeat(rgb[:1], 4, axis=0)
    out = corrupt(X, name, 3, seed=0)
    assert any(not np.array_equal(out[0], out[i]) for i in range(1, 4))


# ------------------------------------------------------------------------------------------
# Severity ordering


def _damage(X: np.ndarray, name: str) -> list[float]:
    return [
        float(np.abs(corrupt(X, name, s, seed=3).astype(np.float64) - X).mean()) for s in SEVERITIES
    ]


@pytest.fixture(scope="module")
def damage_sets():
    rgb8 = natural_images(8, 32, 32, 3, seed=10)
    gray8 = natural_images(8, 28, 28, 1, seed=11)[..., 0]
    return {"rgb": rgb8, "gray": gray8}


@pytest.mark.parametrize("kind", ["rgb", "gray"])
@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n not in NOT_MONOTONE])
def test_severity_5_damages_more_than_1(name, kind, damage_sets):
    d = _damage(damage_sets[kind], name)
    assert d[4] > d[0], f"{name}: damage per severity {d}"


@pytest.mark.parametrize("kind", ["rgb", "gray"])
@pytest.mark.parametrize("name", STRICTLY_MONOTONE)
def test_damage_grows_at_every_severity(name, kind, damage_sets):
    d = _damage(damage_sets[kind], name)
    assert (np.diff(d) > 0).all(), f"{name}: damage per severity {d}"


def test_saturate_is_identity_on_grayscale(gray):
    for s in SEVERITIES:
        np.testing.assert_array_equal(corrupt(gray, "saturate", s), gray)


# ------------------------------------------------------------------------------------------
# Exact checks against hand-computed values


@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_formula(severity, rgb):
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    x = rgb / 255.0
    mean = x.mean(axis=(1, 2), keepdims=True)
    expected = (np.clip((x - mean) * c + mean, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(corrupt(rgb, "contrast", severity), expected)


def test_brightness_on_constant_images():
    gray = np.full((1, 28, 28), 102, dtype=np.uint8)
    # 102/255 + 0.1 = 0.5 -> 127.5 -> truncated to 127
    assert (corrupt(gray, "brightness", 2) == 127).all()
    assert (corrupt(gray, "brightness", 5) == int((102 / 255 + 0.3) * 255)).all()
    colour = np.empty((1, 32, 32, 3), dtype=np.uint8)
    colour[...] = (200, 100, 50)
    # V = 200/255 -> V + 0.05; hue and saturation kept, so RGB scales by V'/V.
    factor = (200 / 255 + 0.05) / (200 / 255)  # 1.06375
    expected = [int(v * factor) for v in (200, 100, 50)]  # 212.75, 106.375, 53.19
    assert expected == [212, 106, 53]
    assert (corrupt(colour, "brightness", 1) == expected).all()
    white = np.full((1, 32, 32, 3), 255, dtype=np.uint8)
    assert (corrupt(white, "brightness", 5) == 255).all()


def test_gaussian_noise_std_on_mid_gray():
    X = np.full((4, 64, 64, 3), 128, dtype=np.uint8)
    for severity, sigma in zip(SEVERITIES, (0.04, 0.06, 0.08, 0.09, 0.10), strict=True):
        out = corrupt(X, "gaussian_noise", severity, seed=severity).astype(np.float64)
        # truncation adds uniform rounding noise (variance 1/12) and lowers the mean by 0.5
        expected = math.sqrt((sigma * 255) ** 2 + 1 / 12)
        assert out.std() == pytest.approx(expected, rel=0.03)
        assert out.mean() == pytest.approx(127.5, abs=0.3)


def test_shot_and_impulse_statistics():
    X = np.full((4, 64, 64, 3), 0.5)
    out = corrupt(X, "shot_noise", 5, seed=0)  # Poisson(0.5 * 50) / 50
    assert out.mean() == pytest.approx(0.5, abs=0.005)
    assert out.std() == pytest.approx(math.sqrt(0.5 / 50), rel=0.03)
    out = corrupt(X, "impulse_noise", 5, seed=0)  # 7 % of elements set to 0 or 1
    hit = out != 0.5
    assert hit.mean() == pytest.approx(0.07, abs=0.005)
    assert (out[hit] == 1.0).mean() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    ("side", "sizes"), [(32, (30, 28, 27, 24, 20)), (28, (26, 25, 23, 21, 18))]
)
def test_pixelate_sizes(side, sizes):
    X = natural_images(2, side, side, 3, seed=4)
    for severity, size in zip(SEVERITIES, sizes, strict=True):
        assert _digital.pixelate_size(side, side, severity) == (size, size)
        box = Image.BOX
        expected = np.stack(
            [
                np.asarray(Image.fromarray(img).resize((size, size), box).resize((side, side), box))
                for img in X
            ]
        )
        np.testing.assert_array_equal(corrupt(X, "pixelate", severity), expected)


def test_jpeg_matches_pillow(rgb, gray):
    for X in (rgb, gray):
        for severity, quality in zip(SEVERITIES, (80, 65, 58, 50, 40), strict=True):
            expected = []
            for img in X:
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=quality)
                expected.append(np.asarray(Image.open(io.BytesIO(buf.getvalue()))))
            np.testing.assert_array_equal(corrupt(X, "jpeg_compression", severity), expected)


def test_zoom_factor_counts():
    assert [len(_blur.zoom_factors(s)) for s in SEVERITIES] == [7, 12, 16, 21, 26]
    assert _blur.zoom_factors(3)[-1] == pytest.approx(1.15)


@pytest.mark.parametrize("severity", (1, 5))
def test_zoom_blur_matches_scipy_zoom(severity, rgb):
    """Reference: CIFAR-10-C's zoom blur written with scipy.ndimage.zoom (float32)."""
    x = (rgb / 255.0).astype(np.float32)
    expected = []
    for img in x:
        acc = np.zeros_like(img)
        factors = _blur.zoom_factors(severity)
        for z in factors:
            side = math.ceil(32 / z)
            top = (32 - side) // 2
            zoomed = ndimage.zoom(img[top : top + side, top : top + side], (z, z, 1), order=1)
            trim = (zoomed.shape[0] - 32) // 2
            acc += zoomed[trim : trim + 32, trim : trim + 32]
        expected.append((img + acc) / (len(factors) + 1))
    out = corrupt(rgb / 255.0, "zoom_blur", severity)
    np.testing.assert_allclose(out, np.clip(expected, 0, 1), atol=1e-6)


def test_defocus_kernels():
    e = math.exp(-1 / (2 * 0.4**2))
    g = np.array([e, 1.0, e]) / (1 + 2 * e)
    np.testing.assert_allclose(_blur.defocus_kernel(0.3, 0.4), np.outer(g, g), atol=1e-7)
    # radius 1: a plus of five 0.2 weights, then a 3x3 Gaussian of sigma 0.2
    e = math.exp(-1 / (2 * 0.2**2))
    g = np.array([e, 1.0, e]) / (1 + 2 * e)
    plus = np.zeros((5, 5))
    plus[2, 1:4] = plus[1:4, 2] = 0.2
    expected = ndimage.correlate1d(ndimage.correlate1d(plus, g, 0), g, 1)
    np.testing.assert_allclose(_blur.defocus_kernel(1.0, 0.2), expected, atol=1e-7)
    k = _blur.defocus_kernel(1.5, 0.1)  # a 3x3 block
    np.testing.assert_allclose(k[1:4, 1:4], 1 / 9, atol=1e-6)
    # anti-aliased disks (other sizes) grow continuously with the radius
    spread = [1 - _blur.defocus_kernel(r, 0.1, antialias=True).max() for r in (0.6, 0.9, 1.2)]
    assert 0 < spread[0] < spread[1] < spread[2]


@pytest.mark.parametrize("delta", (1, 2))
def test_glass_shuffle_copies_sequentially(delta):
    """Reference: CIFAR-10-C's per-pixel loop with its numpy tuple "swap", one image at a time."""
    rng = np.random.default_rng(delta)
    codes = rng.integers(0, 256, size=(3, 12, 10, 3)).astype(np.float64)
    positions = (12 - 2 * delta) * (10 - 2 * delta)
    offsets = rng.integers(-delta, delta, size=(3, positions, 2))
    expected = codes.copy()
    for i in range(3):
        img = expected[i]
        k = 0
        for h in range(12 - delta, delta, -1):
            for w in range(10 - delta, delta, -1):
                dx, dy = offsets[i, k]
                img[h, w], img[h + dy, w + dx] = img[h + dy, w + dx], img[h, w]
                k += 1
    np.testing.assert_array_equal(_blur.glass_shuffle(codes, delta, offsets), expected)


def test_motion_blur_matches_direct_loop():
    rng = np.random.default_rng(0)
    x = rng.random((2, 9, 11, 1))
    angles = np.array([-30.0, 40.0])
    out = _core.motion_blur(x, 6, 2.0, angles)
    taps = np.arange(13)
    weights = np.exp(-(taps**2) / 8.0)
    weights /= weights.sum()
    for i, angle in enumerate(angles):
        a = math.radians(angle)
        ref = np.zeros((9, 11, 1))
        for r in range(9):
            for c in range(11):
                for t, wt in zip(taps, weights, strict=True):
                    rr = min(max(r + math.ceil(t * math.sin(a) - 0.5), 0), 8)
                    cc = min(max(c + math.ceil(t * math.cos(a) - 0.5), 0), 10)
                    ref[r, c] += wt * x[i, rr, cc]
        np.testing.assert_allclose(out[i], np.floor(ref * 255 + 0.5) / 255, atol=1e-12)
    # angle 0 smears a dot along its row only, towards smaller columns
    dot = np.zeros((1, 9, 11, 1))
    dot[0, 4, 8] = 1.0
    smear = _core.motion_blur(dot, 6, 2.0, np.array([0.0]))[0, :, :, 0]
    assert smear[4, :9].sum() > 0.9 and smear[4, 9:].sum() == 0 and smear[[3, 5]].sum() == 0


@pytest.mark.parametrize("mode", ["mirror", "reflect", "nearest"])
def test_bilinear_sample_matches_map_coordinates(mode):
    rng = np.random.default_rng(0)
    x = rng.random((2, 13, 17, 1))
    rows = rng.uniform(-30, 45, (2, 5, 6))
    cols = rng.uniform(-30, 45, (2, 5, 6))
    out = _core.bilinear_sample(x, rows, cols, mode)
    for i in range(2):
        ref = ndimage.map_coordinates(x[i, :, :, 0], [rows[i], cols[i]], order=1, mode=mode)
        np.testing.assert_allclose(out[i, :, :, 0], ref, atol=1e-12)


@pytest.mark.parametrize("factor", [1.0, 1.01, 1.07, 1.25, 1.75, 2.25])
def test_clipped_zoom_matches_scipy(factor):
    x = np.random.default_rng(0).random((2, 28, 30, 1))
    ch, cw = math.ceil(28 / factor), math.ceil(30 / factor)
    t, left = (28 - ch) // 2, (30 - cw) // 2
    for i in range(2):
        z = ndimage.zoom(x[i, t : t + ch, left : left + cw], (factor, factor, 1), order=1)
        tt, ll = (z.shape[0] - 28) // 2, (z.shape[1] - 30) // 2
        np.testing.assert_allclose(
            _core.clipped_zoom(x, factor)[i], z[tt : tt + 28, ll : ll + 30], atol=1e-12
        )


def test_elastic_severity_1_is_the_affine_warp_only(monkeypatch, rgb):
    """With no jitter the affine step is the identity (severity 1 has no elastic field)."""
    x = rgb / 255.0
    monkeypatch.setattr(_digital, "ELASTIC", ((0.0, 0.0, 0.0),) * 5)
    out = _digital.elastic_transform(x[..., :], 1, np.random.default_rng(0), 1.0)
    np.testing.assert_allclose(out, x, atol=1e-9)


def test_hsv_round_trip_and_colorsys():
    rng = np.random.default_rng(0)
    x = rng.random((50, 3))
    hsv = _core.rgb_to_hsv(x)
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in x])
    np.testing.assert_allclose(hsv, ref, atol=1e-12)
    np.testing.assert_allclose(_core.hsv_to_rgb(hsv), x, atol=1e-12)
    grays = np.repeat(rng.random((5, 1)), 3, axis=1)
    np.testing.assert_allclose(_core.rgb_to_hsv(grays)[:, :2], 0.0)


def test_plasma_fractal_range_and_seed():
    a = _core.plasma_fractal(3, 32, 2.0, np.random.default_rng(0))
    b = _core.plasma_fractal(3, 32, 2.0, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 32, 32)
    assert np.allclose(a.min(axis=(1, 2)), 0) and np.allclose(a.max(axis=(1, 2)), 1)
    assert not np.array_equal(a[0], a[1])
    with pytest.raises(ValueError, match="power of two"):
        _core.plasma_fractal(1, 28, 2.0, np.random.default_rng(0))


def test_fog_uses_a_cropped_power_of_two_fractal(gray):
    out = corrupt(gray / 255.0, "fog", 5, seed=0)
    # (x + c P) * m / (m + c) with P in [0, 1] stays within [x m/(m+c), (x+c) m/(m+c)]
    x = gray / 255.0
    m = x.max(axis=(1, 2), keepdims=True)
    assert (out >= x * m / (m + 1.5) - 1e-12).all() and (
        out <= (x + 1.5) * m / (m + 1.5) + 1e-12
    ).all()


def test_canny_outlines_a_square():
    img = np.zeros((1, 16, 16))
    img[0, 4:12, 4:12] = 200.0
    edges = _digital.canny_edges(img, 50, 150)[0]
    assert edges.any()
    rows, cols = np.nonzero(edges)
    assert rows.min() >= 3 and rows.max() <= 12 and cols.min() >= 3 and cols.max() <= 12
    assert not edges[6:10, 6:10].any()  # nothing inside the flat interior
    assert not _digital.canny_edges(np.full((2, 8, 8), 9.0), 50, 150).any()


def test_equalize_hist():
    codes = np.array([[[0, 0], [1, 2]], [[5, 5], [5, 5]]], dtype=np.float64)
    out = _digital.equalize_hist(codes)
    np.testing.assert_array_equal(out[0], [[0, 0], [128, 255]])
    np.testing.assert_array_equal(out[1], codes[1])  # one level: unchanged


def test_frost_textures_look_like_ice():
    tex = _weather.frost_textures(64, 32, 32, 1.0, np.random.default_rng(0))
    assert tex.shape == (64, 32, 32, 3)
    means = tex.mean(axis=(0, 1, 2))
    assert means[0] < means[1] < means[2]  # blue-white
    assert 0.35 < tex.mean() < 0.65 and tex.std() > 0.08
    np.testing.assert_array_equal(tex * 255, np.round(tex * 255))  # 8-bit texture


def test_spatter_colours_on_grayscale():
    X = np.zeros((6, 32, 32))
    water = corrupt(X, "spatter", 3, seed=1)
    mud = corrupt(np.ones((6, 32, 32)), "spatter", 5, seed=1)
    assert water.max() > 0  # turquoise drops show up as light gray on black
    assert mud.min() < 1.0 and mud.min() >= 45.7 / 255 - 1e-9  # brown's luma is about 0.179


# ------------------------------------------------------------------------------------------
# Names and bad inputs


def test_corruption_names():
    assert len(CORRUPTIONS) == 19 and len(set(CORRUPTIONS)) == 19
    assert get_corruption_names() == list(CORRUPTIONS[:15])
    assert get_corruption_names("all") == list(CORRUPTIONS)
    extra = ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert get_corruption_names("validation") == get_corruption_names("extra") == extra
    assert get_corruption_names("noise") == ["gaussian_noise", "shot_noise", "impulse_noise"]
    assert get_corruption_names("blur") == [
        "defocus_blur",
        "glass_blur",
        "motion_blur",
        "zoom_blur",
    ]
    assert get_corruption_names("weather") == ["snow", "frost", "fog", "brightness"]
    assert get_corruption_names("digital") == [
        "contrast",
        "elastic_transform",
        "pixelate",
        "jpeg_compression",
    ]
    groups = sum((get_corruption_names(g) for g in ("noise", "blur", "weather", "digital")), [])
    assert groups == get_corruption_names("common")
    names = get_corruption_names()
    names.append("x")
    assert "x" not in get_corruption_names()
    assert set(SUBSETS) >= {"common", "validation", "extra", "all"}
    with pytest.raises(ValueError, match="subset must be one of"):
        get_corruption_names("colour")
    with pytest.raises(TypeError, match="subset"):
        get_corruption_names(3)


GOOD = np.zeros((2, 16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("X", "kwargs", "error", "match"),
    [
        (GOOD.tolist(), {}, TypeError, "X must be a numpy array"),
        (GOOD.astype(np.int32), {}, TypeError, "dtype uint8"),
        (GOOD.astype(bool), {}, TypeError, "dtype uint8"),
        (np.zeros((16, 16)), {}, ValueError, r"shape \(n, h, w\)"),
        (np.zeros((1, 2, 16, 16, 3)), {}, ValueError, r"shape \(n, h, w\)"),
        (np.zeros((2, 16, 16, 4)), {}, ValueError, "1 \\(gray\\) or 3 \\(RGB\\) channels"),
        (np.zeros((0, 16, 16)), {}, ValueError, "empty"),
        (np.zeros((1, 4, 16)), {}, ValueError, "at least 8x8"),
        (np.full((1, 16, 16), 1.5), {}, ValueError, r"values in \[0, 1\]"),
        (np.full((1, 16, 16), -0.1), {}, ValueError, r"values in \[0, 1\]"),
        (np.full((1, 16, 16), np.nan), {}, ValueError, "NaN"),
        (GOOD, {"corruption": "rain"}, ValueError, "gaussian_noise"),
        (GOOD, {"corruption": 3}, TypeError, "corruption must be a string"),
        (GOOD, {"severity": 0}, ValueError, "severity must be an integer in 1..5, got 0"),
        (GOOD, {"severity": 6}, ValueError, "severity"),
        (GOOD, {"severity": 2.0}, TypeError, "severity"),
        (GOOD, {"severity": True}, TypeError, "severity"),
        (GOOD, {"seed": -1}, ValueError, "seed"),
        (GOOD, {"seed": "a"}, TypeError, "seed"),
    ],
)
def test_bad_inputs(X, kwargs, error, match):
    args = {"corruption": "fog", "severity": 1, **kwargs}
    with pytest.raises(error, match=match):
        corrupt(X, args["corruption"], args["severity"], seed=args.get("seed"))


def test_numpy_integers_are_accepted(rgb):
    out = corrupt(rgb, "contrast", np.int64(2), seed=np.int32(1))
    np.testing.assert_array_equal(out, corrupt(rgb, "contrast", 2))


# ------------------------------------------------------------------------------------------
# Real data: a classifier trained on Fashion-MNIST loses accuracy as severity rises


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


# Expected not to lose accuracy on Fashion-MNIST between severity 1 and 5 (and why):
# - saturate: the identity on grayscale;
# - elastic_transform: CIFAR-10-C's affine jitter shrinks with severity (2.56 -> 0.96 px at
#   32 px) and the small CNN is hurt more by it than by the growing sub-pixel elastic field;
# - shot_noise, speckle_noise: signal-dependent noise is zero on the black background that
#   covers about half of every image, and on the garment it stays below what the CNN notices;
# - jpeg_compression: quality 40 is nearly lossless to the classifier on 28x28 gray images.
FMNIST_MAY_NOT_HURT = {
    "saturate",
    "elastic_transform",
    "shot_noise",
    "speckle_noise",
    "jpeg_compression",
}


@pytest.mark.slow
def test_fashion_mnist_accuracy_falls_with_severity():
    torch = pytest.importorskip("torch")
    files = {
        "xtr": "train-images-idx3-ubyte.gz",
        "ytr": "train-labels-idx1-ubyte.gz",
        "xte": "t10k-images-idx3-ubyte.gz",
        "yte": "t10k-labels-idx1-ubyte.gz",
    }
    if not all((FMNIST_DIR / f).is_file() for f in files.values()):
        pytest.skip(f"Fashion-MNIST not found in {FMNIST_DIR}")
    n_train, n_test = 12000, 2000
    X_train = _read_idx(FMNIST_DIR / files["xtr"], 16).reshape(-1, 28, 28)[:n_train]
    y_train = _read_idx(FMNIST_DIR / files["ytr"], 8)[:n_train].astype(np.int64)
    X_test = _read_idx(FMNIST_DIR / files["xte"], 16).reshape(-1, 28, 28)[:n_test]
    y_test = _read_idx(FMNIST_DIR / files["yte"], 8)[:n_test].astype(np.int64)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        nn = torch.nn
        net = nn.Sequential(
            nn.Conv2d(1, 16, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 10),
        )
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        Xt = torch.from_numpy(X_train[:, None] / np.float32(255.0))
        yt = torch.from_numpy(y_train)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            perm = torch.randperm(n_train, generator=gen)
            for i in range(0, n_train, 64):
                idx = perm[i : i + 64]
                loss = nn.functional.cross_entropy(net(Xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()

        def accuracy(X: np.ndarray) -> float:
            with torch.no_grad():
                pred = net(torch.from_numpy(X[:, None] / np.float32(255.0))).argmax(1).numpy()
            return float((pred == y_test).mean())

        clean = accuracy(X_test)
        acc = {
            name: [accuracy(corrupt(X_test, name, s, seed=s)) for s in SEVERITIES]
            for name in CORRUPTIONS
        }
    finally:
        torch.set_num_threads(threads)

    table = "\n".join(
        f"{name:18s} " + " ".join(f"{a:.3f}" for a in accs) for name, accs in acc.items()
    )
    print(f"\nFashion-MNIST, small CNN, clean accuracy {clean:.3f}; severity 1..5:\n{table}")
    assert clean > 0.8, table
    assert len(set(acc["saturate"])) == 1 and acc["saturate"][0] == clean, table
    expected = [n for n in CORRUPTIONS if n not in FMNIST_MAY_NOT_HURT]
    hurt = [n for n in expected if acc[n][4] < acc[n][0]]
    assert len(hurt) >= len(expected) - 1, (
        f"severity 5 not below 1 for {set(expected) - set(hurt)}\n{table}"
    )
    # roughly decreasing: averaged over the types, accuracy falls at every severity
    mean_acc = np.mean([acc[n] for n in CORRUPTIONS if n != "saturate"], axis=0)
    assert (np.diff(mean_acc) < 0).all(), f"{mean_acc}\n{table}"
    # and for most types the drop from severity 1 to 5 is clear (> 1 point)
    clear = [n for n in CORRUPTIONS if acc[n][4] < acc[n][0] - 0.01]
    assert len(clear) >= 12, table
