"""Noise corruptions: gaussian_noise, shot_noise, impulse_noise, speckle_noise.

All four act per element (per pixel and channel) with CIFAR-10-C's parameters; they have no
spatial parameter, so they mean the same at every image size.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise"]

# CIFAR-10-C parameters, severity 1..5.
GAUSSIAN_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_RATE = (500, 250, 100, 75, 50)
IMPULSE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)
SPECKLE_SIGMA = (0.06, 0.10, 0.12, 0.16, 0.20)


def gaussian_noise(
    x: np.ndarray, severity: int, rng: np.random.Generator, scale: float
) -> np.ndarray:
    """``x + N(0, sigma^2)`` per element."""
    sigma = GAUSSIAN_SIGMA[severity - 1]
    return x + rng.normal(0.0, sigma, size=x.shape)


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """``Poisson(x * c) / c`` per element."""
    c = SHOT_RATE[severity - 1]
    return rng.poisson(x * c).astype(np.float64) / c


def impulse_noise(
    x: np.ndarray, severity: int, rng: np.random.Generator, scale: float
) -> np.ndarray:
    """Salt and pepper per element: with probability ``a`` set to 1 or 0 with equal odds."""
    amount = IMPULSE_AMOUNT[severity - 1]
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    out = x.copy()
    out[hit & salt] = 1.0
    out[hit & ~salt] = 0.0
    return out


def speckle_noise(
    x: np.ndarray, severity: int, rng: np.random.Generator, scale: float
) -> np.ndarray:
    """``x + x * N(0, sigma^2)`` per element."""
    sigma = SPECKLE_SIGMA[severity - 1]
    return x + x * rng.normal(0.0, sigma, size=x.shape)
