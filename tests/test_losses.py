"""The numpy score maths against values computed by hand, and the torch loss against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distilldetect import losses


def test_sharpen_by_hand():
    p = np.array([[0.2, 0.8], [0.5, 0.5]])
    out = losses.sharpen(p, 0.5)  # p ** 2 renormalised
    np.testing.assert_allclose(out[0], [0.04 / 0.68, 0.64 / 0.68])
    np.testing.assert_allclose(out[1], [0.5, 0.5])
    assert losses.sharpen(p, 1.0) is p
    flat = losses.sharpen(p, 2.0)  # sqrt renormalised: flatter
    assert flat[0, 1] < 0.8 and flat[0, 1] == pytest.approx(
        math.sqrt(0.8) / (math.sqrt(0.2) + math.sqrt(0.8))
    )


def test_kld_by_hand_and_clipping():
    p = np.array([[0.25, 0.75]])
    q = np.array([[0.5, 0.5]])
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert losses.kld(p, q)[0] == pytest.approx(expected, rel=1e-12)
    # a zero in p contributes eps*log(eps/q); a zero in q is clipped to eps (no inf)
    p0 = np.array([[1.0, 0.0]])
    q0 = np.array([[0.0, 1.0]])
    eps = losses.EPSILON
    expected0 = 1.0 * math.log(1.0 / eps) + eps * math.log(eps / 1.0)
    assert losses.kld(p0, q0)[0] == pytest.approx(expected0, rel=1e-12)
    assert np.isfinite(losses.kld(p0, q0)).all()


def test_xent_by_hand():
    p = np.array([[0.25, 0.75]])
    q = np.array([[0.4, 0.6]])
    expected = -(0.25 * math.log(0.4) + 0.75 * math.log(0.6))
    assert losses.xent(p, q)[0] == pytest.approx(expected, rel=1e-12)
    # student rows are renormalised, as Keras does
    assert losses.xent(p, 2 * q)[0] == pytest.approx(expected, rel=1e-12)
    # clipped at 1 - eps above and eps below
    assert losses.xent(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]]))[0] == pytest.approx(
        -math.log(1 - losses.EPSILON)
    )


def test_distillation_score_applies_temperature_to_teacher_only():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=20)
    q = rng.dirichlet(np.ones(5), size=20)
    for loss_type, fn in (("kld", losses.kld), ("xent", losses.xent)):
        out = losses.distillation_score(p, q, loss_type, temperature=0.5)
        np.testing.assert_allclose(out, fn(losses.sharpen(p, 0.5), q))
    with pytest.raises(ValueError, match="loss_type"):
        losses.distillation_score(p, q, "mse")


def test_kld_is_zero_on_identical_and_positive_otherwise():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), size=50)
    q = rng.dirichlet(np.ones(4), size=50)
    np.testing.assert_allclose(losses.kld(p, p), 0.0, atol=1e-12)
    assert (losses.kld(p, q) > 0).all()
