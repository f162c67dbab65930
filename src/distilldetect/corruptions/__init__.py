"""The 19 CIFAR-10-C corruptions for any batch of images: :func:`corrupt`.

``corrupt(X, corruption, severity, seed=None)`` takes images ``(n, h, w)`` or ``(n, h, w, c)``
(``c`` 1 or 3), uint8 or float in [0, 1], and returns the same shape and dtype. The algorithms
and severity parameters are CIFAR-10-C's (Hendrycks & Dietterich, 2019), rewritten with
numpy, SciPy and Pillow only: no OpenCV, scikit-image, ImageMagick or numba.

Fidelity to CIFAR-10-C
----------------------
CIFAR-10-C's generator never seeded its random numbers, so only the deterministic corruptions
can match the released bytes; the random ones match in distribution.

* Same algorithm and parameters, written directly: gaussian_noise, shot_noise,
  impulse_noise, speckle_noise, fog (diamond-square plasma), gaussian_blur, defocus_blur,
  zoom_blur, brightness, contrast, saturate (numpy HSV conversion with scikit-image's
  conventions), pixelate and jpeg_compression (Pillow, as the generator). The deterministic
  ones among them give CIFAR-10-C's numbers up to float rounding (zoom_blur matches a
  ``scipy.ndimage.zoom`` reference to 1e-6; pixelate and jpeg_compression are Pillow's bytes).
* Same algorithm with a replacement for a library call: glass_blur (exact, including the
  sequential pixel *copying* of the original loop); motion_blur and snow's flake blur
  (ImageMagick's ``MotionBlurImage`` kernel and offsets rewritten in numpy, edge
  replication, 8-bit rounding); elastic_transform (OpenCV's ``warpAffine`` replaced by exact
  bilinear sampling; OpenCV quantises sub-pixel positions to 1/32 px).
* Approximations: spatter's water mode (OpenCV's Canny, 5x5-mask distance transform and
  ``equalizeHist`` are replaced by a numpy Canny with the same thresholds, SciPy's exact
  Euclidean distance transform and the same equalisation formula); frost (see below).
* frost is **not** faithful: CIFAR-10-C blends crops of frost photographs that this library
  does not ship. Textures are generated procedurally per image (seeded): blue-white ice with
  a slowly varying coverage, crystal edges and needle families, mean level about 0.5. The
  blending weights are CIFAR-10-C's.

Image sizes other than 32x32
----------------------------
CIFAR-10-C's parameters are for 32x32 images. For an image of height ``h`` and width ``w`` the
size factor is ``s = min(h, w) / 32`` (0.875 for Fashion-MNIST's 28x28); at 32x32, ``s = 1``
and every parameter is CIFAR-10-C's (the shorter side is used so that a wide image is
damaged like the largest square inside it, not more). Photometric parameters (noise levels, brightness,
contrast, saturation, JPEG quality, blend weights) are kept. Spatial ones are multiplied by
``s`` so that a severity means the same damage relative to the image:

* gaussian_blur, glass_blur: sigma * s; glass_blur's neighbourhood ``max(1, round(s))``.
* defocus_blur: radius * s and smoothing sigma * s; at sizes other than 32 the disk is
  anti-aliased (pixels weighted by their area inside the disk) so the kernel grows
  continuously with the radius (the hard 0/1 disk would turn CIFAR-10-C's radius 1 into a
  single pixel at 28 px).
* motion_blur: radius * s and sigma * s.
* zoom_blur, pixelate: relative factors, used as they are (pixelate resizes to
  ``int(side * c)``).
* elastic_transform: affine jitter * s, smoothing sigma * s, and alpha rescaled so the
  displacement's standard deviation is s times CIFAR-10-C's (the affine points follow the
  image size as in CIFAR-10-C).
* snow: flake zoom ``max(1, zoom * s)`` (a flake is at least a pixel), blur radius and sigma
  * s.
* spatter: smoothing sigma * s with the noise scale adjusted so the liquid layer keeps its
  standard deviation (same coverage), water distance cap 20 * s, mud blur * s.
* fog: the plasma fractal is drawn on the smallest power-of-two square covering the image
  and cropped (so its structure follows the image size).
* frost: texture wavelengths * s (CIFAR-10-C crops 32x32 from fixed textures).
* noise, brightness, contrast, saturate, jpeg_compression: no spatial parameter.

Grayscale
---------
``(n, h, w)`` and ``(n, h, w, 1)`` images work throughout. Colour steps act on the single
channel as follows: brightness adds to the gray level (the HSV value of a gray pixel);
saturate is the identity (a gray image has no saturation to change); snow's ``gray(x)`` is the
image itself; spatter's water and mud colours and frost's textures are replaced by their luma
(BT.601 weights, as OpenCV's RGB2GRAY); JPEG encodes in Pillow's 'L' mode.

8-bit steps
-----------
Where CIFAR-10-C passes through 8-bit images (glass_blur's intermediate, motion_blur's PNG
round trip, snow's flake layer, spatter's masks, pixelate, jpeg_compression) the same
quantisation is applied for float input too, so that ``corrupt`` on ``X / 255.0`` (float64)
equals ``corrupt`` on uint8 ``X`` up to the final truncation. Float input to pixelate and
jpeg_compression is rounded to 8 bits first.

Examples
--------
>>> import numpy as np
>>> from distilldetect.corruptions import corrupt, get_corruption_names
>>> X = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
>>> out = corrupt(X, "fog", severity=2, seed=1)
>>> out.shape, out.dtype
((4, 32, 32, 3), dtype('uint8'))
>>> get_corruption_names("weather")
['snow', 'frost', 'fog', 'brightness']
"""

from __future__ import annotations

from ._api import CORRUPTIONS, MIN_SIDE, SUBSETS, corrupt, get_corruption_names

__all__ = ["CORRUPTIONS", "MIN_SIDE", "SUBSETS", "corrupt", "get_corruption_names"]
