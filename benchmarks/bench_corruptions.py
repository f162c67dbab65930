"""Time every CIFAR-10-C corruption on Fashion-MNIST-shaped and CIFAR-shaped batches.

Usage::

    .venv/bin/python benchmarks/bench_corruptions.py [--n 1000] [--severity 3] [--repeat 3]

Prints one row per corruption: the best of ``--repeat`` wall-clock times for ``n`` images of
28x28 (grayscale, uint8) and of 32x32x3 (RGB, uint8). The images are seeded smooth random
images (content hardly matters for speed).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from scipy import ndimage

from distilldetect.corruptions import CORRUPTIONS, corrupt


def smooth_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Seeded uint8 images of smooth random shading plus fine texture."""
    rng = np.random.default_rng(seed)
    sigma = (0, 3, 3) + (0,) * (len(shape) - 2)
    coarse = ndimage.gaussian_filter(rng.random((n, *shape)), sigma, mode="wrap")
    coarse = (coarse - coarse.min()) / (coarse.max() - coarse.min())
    img = 0.7 * coarse + 0.3 * rng.random((n, *shape))
    return (img * 255).astype(np.uint8)


def best_time(X: np.ndarray, name: str, severity: int, repeat: int) -> float:
    times = []
    for r in range(repeat):
        start = time.perf_counter()
        corrupt(X, name, severity, seed=r)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images per batch (default 1000)")
    parser.add_argument("--severity", type=int, default=3, help="severity 1..5 (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing, best kept")
    args = parser.parse_args()

    fmnist = smooth_images(args.n, (28, 28), seed=0)
    cifar = smooth_images(args.n, (32, 32, 3), seed=1)
    for X in (fmnist, cifar):  # warm-up (imports, caches)
        corrupt(X[:2], "fog", 1, seed=0)

    print(
        f"corrupt() on {args.n} uint8 images, severity {args.severity}, best of {args.repeat} "
        f"(numpy {np.__version__}, {platform.processor() or platform.machine()})"
    )
    header = f"{'corruption':18s} {'28x28 gray (s)':>15s} {'32x32x3 (s)':>12s}"
    print(header)
    print("-" * len(header))
    totals = [0.0, 0.0]
    for name in CORRUPTIONS:
        t_gray = best_time(fmnist, name, args.severity, args.repeat)
        t_rgb = best_time(cifar, name, args.severity, args.repeat)
        totals[0] += t_gray
        totals[1] += t_rgb
        print(f"{name:18s} {t_gray:15.3f} {t_rgb:12.3f}")
    print("-" * len(header))
    print(f"{'total':18s} {totals[0]:15.3f} {totals[1]:12.3f}")


if __name__ == "__main__":
    main()
