"""How far ``precision='bfloat16'`` scores are from float32 ones, on the shipped detector.

Usage: ``python scripts/check_precision.py [--n 2000]`` (needs the Fashion-MNIST files).
Scores ``n`` clean test images and 1000 gaussian-noise (severity 5) ones with the shipped
Fashion-MNIST detector, ``optimize=True``, in float32 and in bfloat16, and prints the Spearman
correlation, the median relative difference, the agreement of the flags at the float32 scores'
95th percentile, the flagged rate on the noisy images in both, and each one's throughput.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from distilldetect import ModelDistillation, scale_by_instance  # noqa: E402
from distilldetect.corruptions import corrupt  # noqa: E402
from distilldetect.datasets import load_fashion_mnist  # noqa: E402
from distilldetect.experiments.stages import load_pretrained  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="clean test images to score")
    args = parser.parse_args()
    ad = load_pretrained()
    (_, _), (x_test, _) = load_fashion_mnist()
    X = scale_by_instance(x_test[: args.n].astype("float32") / 255)
    noisy = corrupt(x_test[args.n : args.n + 1000], "gaussian_noise", severity=5, seed=0)
    Xn = scale_by_instance(noisy.astype("float32") / 255)
    settings = {
        "distilled_model": ad.distilled_model,
        "model": ad.model,
        "loss_type": ad.loss_type,
        "temperature": ad.temperature,
        "threshold": ad.threshold,
    }
    scores = {}
    for precision in ("float32", "bfloat16"):
        det = ModelDistillation(**settings, optimize=True, precision=precision)
        clean, shifted = det.score(X), det.score(Xn)
        start = time.perf_counter()
        det.score(X)
        rate = len(X) / (time.perf_counter() - start)
        scores[precision] = (clean, shifted)
        print(f"{precision}: {rate:.0f} instances/s")
    (a, an), (b, bn) = scores["float32"], scores["bfloat16"]
    threshold = np.percentile(a, 95)
    print(f"Spearman correlation of clean scores: {spearmanr(a, b)[0]:.6f}")
    print(f"median relative difference: {np.median(np.abs(a - b) / np.maximum(a, 1e-9)):.4f}")
    print(
        f"same side of the float32 95th percentile: {np.mean((a > threshold) == (b > threshold)):.4f}"
    )
    print(
        f"noisy images flagged: float32 {np.mean(an > threshold):.3f}, "
        f"bfloat16 {np.mean(bn > threshold):.3f}"
    )


if __name__ == "__main__":
    main()
