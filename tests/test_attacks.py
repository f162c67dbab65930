"""distilldetect.attacks: FGSM, PGD, C&W-L2, SimBA, ART's Square, the adaptive attack.

A small torch MLP is trained in the test on scikit-learn's 8x8 digits (seconds), with a small
distilled student for the adaptive attack.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


from distilldetect import ModelDistillation, attacks  # noqa: E402
from distilldetect.backends.torch.models import mlp  # noqa: E402
from distilldetect.utils import predict_batch  # noqa: E402


@pytest.fixture(scope="module")
def digits(attack_digits):
    return attack_digits


@pytest.fixture(scope="module")
def detector(digits):
    net, x_train, _, _ = digits
    torch.manual_seed(1)
    student = mlp((8, 8), 10, (32,))
    ad = ModelDistillation(distilled_model=student, model=net, loss_type="kld")
    ad.fit(x_train, epochs=8, verbose=False, seed=0)
    return ad


def success(net, x_adv, y):
    return float((predict_batch(x_adv, net).argmax(1) != y).mean())


def test_fgsm_moves_each_pixel_by_exactly_eps_within_clip_bounds(digits):
    net, _, x, y = digits
    eps = 0.1
    free = attacks.fgsm(net, x, y, eps, verbose=False)
    d = np.abs(free - x)
    assert np.allclose(d, eps, atol=1e-6)  # an MLP's input gradient is nowhere zero here
    clipped = attacks.fgsm(net, x, y, eps, clip=(0.0, 1.0), verbose=False)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0
    # the same step, then clipped: pixels that could move freely moved by exactly eps
    assert np.allclose(clipped, np.clip(free, 0.0, 1.0), atol=1e-6)
    inside = (x - eps >= 0) & (x + eps <= 1)
    assert np.allclose(np.abs(clipped - x)[inside], eps, atol=1e-6)
    assert clipped.dtype == x.dtype and clipped.shape == x.shape


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
def test_pgd_stays_inside_the_ball(digits, norm, eps):
    net, _, x, y = digits
    x_adv = attacks.pgd(net, x, y, eps, norm=norm, steps=8, clip=(0.0, 1.0), verbose=False)
    d = (x_adv - x).reshape(len(x), -1)
    size = np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)
    assert size.max() <= eps * (1 + 1e-5)
    assert size.max() > 0.5 * eps  # it moved
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_pgd_succeeds_at_least_as_often_as_fgsm(digits):
    net, _, x, y = digits
    eps = 0.08
    rate_fgsm = success(net, attacks.fgsm(net, x, y, eps, verbose=False), y)
    rate_pgd = success(net, attacks.pgd(net, x, y, eps, steps=20, verbose=False), y)
    assert rate_pgd >= rate_fgsm
    assert rate_pgd > 0.3


def test_seeded_attacks_are_deterministic(digits):
    net, _, x, y = digits
    a = attacks.pgd(net, x, y, 0.1, steps=3, seed=5, verbose=False)
    b = attacks.pgd(net, x, y, 0.1, steps=3, seed=5, verbose=False)
    c = attacks.pgd(net, x, y, 0.1, steps=3, seed=6, verbose=False)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    s1 = attacks.simba(net, x[:20], y[:20], 0.2, steps=30, seed=1, verbose=False)
    s2 = attacks.simba(net, x[:20], y[:20], 0.2, steps=30, seed=1, verbose=False)
    assert np.array_equal(s1, s2)


def test_batching_does_not_change_fgsm(digits):
    net, _, x, y = digits
    a = attacks.fgsm(net, x, y, 0.1, batch_size=7, verbose=False)
    b = attacks.fgsm(net, x, y, 0.1, batch_size=256, verbose=False)
    assert np.allclose(a, b, atol=1e-6)


def test_carlini_wagner_fools_with_small_l2_inside_the_box(digits):
    net, _, x, y = digits
    eps = 0.3
    cw = attacks.carlini_wagner_l2(net, x, y, eps, steps=40, binary_search_steps=3, verbose=False)
    assert np.abs(cw - x).max() <= eps * (1 + 1e-5)
    ok = predict_batch(cw, net).argmax(1) != y
    assert ok.mean() > 0.7
    pgd = attacks.pgd(net, x, y, eps, steps=10, verbose=False)
    l2 = lambda a: np.linalg.norm((a - x).reshape(len(x), -1), axis=1)  # noqa: E731
    assert np.median(l2(cw)[ok]) < np.median(l2(pgd))  # C&W looks for the smallest change


def test_blackbox_uses_only_predictions(digits):
    net, _, x, y = digits
    calls = []

    def predict(batch):  # a black box: numpy in, numpy probabilities out, no gradient
        assert isinstance(batch, np.ndarray)
        calls.append(len(batch))
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    x, y = x[:40], y[:40]
    steps = 40
    x_adv = attacks.simba(predict, x, y, 0.3, steps=steps, verbose=False)
    assert np.abs(x_adv - x).max() <= 0.3 + 1e-6
    assert success(net, x_adv, y) > 0.2
    assert sum(calls) <= len(x) * (2 * steps + 1)  # at most 2 queries per image and step
    with pytest.raises(TypeError, match=r"gradient attacks \['fgsm', 'pgd', 'cw', 'adaptive'\]"):
        attacks.pgd(predict, x, y, 0.1, verbose=False)
    with pytest.raises(TypeError, match="black-box callable"):
        attacks.fgsm(predict, x, y, 0.1, verbose=False)


def test_square_attack_through_art(digits):
    pytest.importorskip("art")
    net, _, x, y = digits
    x, y = x[:50], y[:50]
    x_adv = attacks.square(net, x, y, 0.3, steps=60, seed=0, verbose=False)
    assert x_adv.shape == x.shape
    assert np.abs(x_adv - x).max() <= 0.3 + 1e-5
    assert success(net, x_adv, y) > 0.2


def test_adaptive_attack_lowers_the_score_relative_to_plain_pgd(digits, detector):
    net, _, x, y = digits
    eps = 0.15
    before = [p.detach().clone() for p in detector.distilled_model.parameters()]
    grads = [
        None if p.grad is None else p.grad.clone() for p in detector.distilled_model.parameters()
    ]
    plain = attacks.pgd(net, x, y, eps, steps=20, verbose=False)
    adaptive = attacks.adaptive_pgd(
        net, detector.distilled_model, x, y, eps, lam=5.0, steps=20, verbose=False,
        loss_type=detector.loss_type, temperature=detector.temperature,
    )  # fmt: skip
    ok_plain = predict_batch(plain, net).argmax(1) != y
    ok_adaptive = predict_batch(adaptive, net).argmax(1) != y
    assert ok_adaptive.mean() > 0.2
    s_plain = detector.score(plain)[ok_plain]
    s_adaptive = detector.score(adaptive)[ok_adaptive]
    assert np.median(s_adaptive) < 0.8 * np.median(s_plain)
    assert s_adaptive.mean() < 0.8 * s_plain.mean()
    assert np.abs(adaptive - x).max() <= eps * (1 + 1e-5)
    # the student's weights, gradients and flags are untouched
    params = list(detector.distilled_model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))
    assert all(
        (g is None and p.grad is None) or torch.equal(g, p.grad)
        for g, p in zip(grads, params, strict=True)
    )
    assert all(p.requires_grad for p in detector.distilled_model.parameters())


def test_an_ensemble_of_students_is_accepted(digits, detector):
    net, _, x, y = digits
    student = detector.distilled_model
    out = attacks.adaptive_pgd(
        net, [student, student], x[:10], y[:10], 0.1, steps=2, reduce="max", verbose=False
    )
    assert out.shape == x[:10].shape


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
        ({"eps": -1.0}, ValueError, "eps must be a finite number > 0"),
        ({"eps": float("nan")}, ValueError, "eps must be a finite number > 0"),
        ({"eps": float("inf")}, ValueError, "eps must be a finite number > 0"),
        ({"eps": "0.1"}, TypeError, "eps must be"),
        ({"steps": 0}, ValueError, "steps must be an integer >= 1"),
        ({"norm": "l1"}, ValueError, "norm must be one of"),
        ({"step_size": -0.1}, ValueError, "step_size"),
        ({"clip": (1.0, 0.0)}, ValueError, "clip must be"),
        ({"clip": "01"}, TypeError, "clip must be"),
        ({"seed": -1}, ValueError, "seed"),
        ({"y": np.zeros(3, dtype=np.int64)}, ValueError, "y must have one label per row"),
        ({"y": np.zeros(200)}, TypeError, "y must be a 1-D integer array"),
        ({"x": np.zeros((200, 8, 8), dtype=np.int64)}, TypeError, "x must be a floating array"),
    ],
)
def test_argument_errors_name_the_argument(digits, kwargs, error, match):
    net, _, x, y = digits
    call = {"x": x, "y": y, "eps": 0.1, "verbose": False, **kwargs}
    with pytest.raises(error, match=match):
        attacks.pgd(net, call.pop("x"), call.pop("y"), call.pop("eps"), **call)


def test_adaptive_argument_errors(digits, detector):
    net, _, x, y = digits
    s = detector.distilled_model
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        attacks.adaptive_pgd(net, s, x, y, 0.1, lam=-1.0, verbose=False)
    with pytest.raises(ValueError, match="students must hold at least one"):
        attacks.adaptive_pgd(net, [], x, y, 0.1, verbose=False)
    with pytest.raises(TypeError, match=r"students\[0\]"):
        attacks.adaptive_pgd(net, [lambda v: v], x, y, 0.1, verbose=False)
    with pytest.raises(ValueError, match="loss_type"):
        attacks.adaptive_pgd(net, s, x, y, 0.1, loss_type="mse", verbose=False)
    with pytest.raises(ValueError, match="objective must be 'margin' or 'ce'"):
        attacks.adaptive_pgd(net, s, x, y, 0.1, objective="kl", verbose=False)
    with pytest.raises(ValueError, match="kappa must be a number > 0"):
        attacks.adaptive_pgd(net, s, x, y, 0.1, kappa=0.0, verbose=False)
    with pytest.raises(ValueError, match="unknown attack"):
        attacks.check_attack_names(["fgsm", "deepfool"])
