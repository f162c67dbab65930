"""AUROC and the teacher-uncertainty baselines against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from distilldetect.metrics import auroc, one_minus_max_prob, predictive_entropy


def test_auroc_by_hand_and_against_pair_counting():
    assert auroc(np.array([2.0, 3.0]), np.array([1.0, 2.0])) == pytest.approx(0.875)
    assert auroc(np.array([5.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([0.0]), np.array([1.0, 2.0])) == 0.0
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert auroc(pos, neg) == pytest.approx(pairs)
    assert np.isnan(auroc(np.array([]), neg))


def test_uncertainty_scores():
    p = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    np.testing.assert_allclose(
        predictive_entropy(p), [np.log(2), 0.0, -(0.2 * np.log(0.2) + 0.8 * np.log(0.8))]
    )
    np.testing.assert_allclose(one_minus_max_prob(p), [0.5, 0.0, 0.2])
