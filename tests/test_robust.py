"""distilldetect.augment.adversarial_augment: the robust (adversarially distilled) student.

A small torch MLP teacher is trained in the test on scikit-learn's 8x8 digits (seconds); the
augmenter's PGD, its bookkeeping (rows, ball, clip, modes, flags, seeding) and its effect on a
student trained with it are checked.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


from distilldetect import ModelDistillation, attacks  # noqa: E402
from distilldetect.augment import adversarial_augment  # noqa: E402
from distilldetect.backends.torch.models import mlp  # noqa: E402
from distilldetect.backends.torch.runtime import train_classifier  # noqa: E402
from distilldetect.metrics import auroc as auroc_of  # noqa: E402
from distilldetect.utils import predict_batch  # noqa: E402


@pytest.fixture(scope="module")
def digits(attack_digits):
    return attack_digits


def _student(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return mlp((8, 8), 10, (32,))


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p, q = np.clip(p, 1e-12, 1), np.clip(q, 1e-12, 1)
    return (p * (np.log(p) - np.log(q))).sum(1)


def test_rows_ball_clip_and_dtype(digits):
    _, x_train, _, _ = digits
    x = x_train[:400]
    fn = adversarial_augment(_student(1), eps=0.2, steps=3, p_adv=0.5, clip=(0.0, 1.0))
    out = fn(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out is not x and np.array_equal(x, x_train[:400])  # input untouched
    moved = np.abs(out - x).reshape(len(x), -1).max(1) > 0
    assert 0.4 < moved.mean() < 0.6  # about p_adv of the rows
    assert np.array_equal(out[~moved], x[~moved])  # the others exactly clean
    assert np.abs(out - x).max() <= 0.2 + 1e-6
    assert out.min() >= 0.0 and out.max() <= 1.0
    everyone = adversarial_augment(_student(1), eps=0.2, steps=3, p_adv=1.0)
    assert (np.abs(everyone(x, np.random.default_rng(0)) - x).reshape(len(x), -1).max(1) > 0).all()


def test_pgd_moves_the_student_more_than_random_noise(digits):
    _, x_train, _, _ = digits
    student = _student(2)
    train_classifier(student, x_train, digits[0](torch.as_tensor(x_train)).argmax(1).numpy(),
                     epochs=5, seed=0, verbose=False)  # fmt: skip
    x = x_train[:300]
    eps = 0.15
    adv = adversarial_augment(student, eps=eps, steps=5, p_adv=1.0)(x, np.random.default_rng(1))
    noise = np.random.default_rng(1).choice([-eps, eps], size=x.shape).astype(np.float32)
    clean = predict_batch(x, student)
    kl_adv = _kl_rows(clean, predict_batch(adv, student))
    kl_noise = _kl_rows(clean, predict_batch(x + noise, student))
    assert np.median(kl_adv) > 3 * np.median(kl_noise)


def test_modes_flags_and_gradients_are_restored(digits):
    _, x_train, _, _ = digits
    student = _student(3)
    student.train()
    first = next(student.parameters())
    first.requires_grad_(False)
    before = [p.detach().clone() for p in student.parameters()]
    adversarial_augment(student, eps=0.1, steps=2)(x_train[:64], np.random.default_rng(0))
    assert all(m.training for m in student.modules())
    assert [p.requires_grad for p in student.parameters()] == [False] + [True] * (len(before) - 1)
    assert all(p.grad is None for p in student.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


def test_seeding(digits):
    _, x_train, _, _ = digits
    x = x_train[:100]
    student = _student(4)
    a = adversarial_augment(student, eps=0.1, steps=2)(x, np.random.default_rng(5))
    b = adversarial_augment(student, eps=0.1, steps=2)(x, np.random.default_rng(5))
    c = adversarial_augment(student, eps=0.1, steps=2)(x, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    own = adversarial_augment(student, eps=0.1, steps=2, seed=9)
    d = own(x, np.random.default_rng(0))
    own2 = adversarial_augment(student, eps=0.1, steps=2, seed=9)
    assert np.array_equal(d, own2(x, np.random.default_rng(123)))  # the own seed wins


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"eps": 0}, ValueError, "eps must be a finite number > 0"),
        ({"eps": float("nan")}, ValueError, "eps must be a finite number > 0"),
        ({"eps": "0.1"}, TypeError, "eps must be a finite number > 0, got str"),
        ({"steps": 0}, ValueError, "steps"),
        ({"p_adv": 1.5}, ValueError, r"p_adv must be a number in \(0, 1\]"),
        ({"p_adv": 0}, ValueError, r"p_adv must be a number in \(0, 1\]"),
        ({"p_adv": True}, TypeError, "p_adv must be a number"),
        ({"step_size": -1}, ValueError, "step_size must be a finite number > 0"),
        ({"clip": (1.0, 0.0)}, ValueError, "clip"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_argument_errors_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        adversarial_augment(_student(0), **kwargs)


def test_wrong_student_and_input(digits):
    with pytest.raises(TypeError, match="student"):
        adversarial_augment(lambda x: x)
    fn = adversarial_augment(_student(0), eps=0.1, steps=1)
    with pytest.raises(TypeError, match="x must be a floating array"):
        fn(np.zeros((4, 8, 8), np.int64), np.random.default_rng(0))


def test_a_robust_student_detects_pgd_on_the_teacher_better(digits):
    """Trained with the augmenter, the student does not follow the teacher into PGD's
    adversarial region, so the distillation score separates PGD images from clean ones better
    than the same student trained without it (same seed, data and epochs)."""
    net, x_train, x, y = digits
    detectors = {}
    for name, robust in (("plain", False), ("robust", True)):
        student = _student(7)
        augment = adversarial_augment(student, eps=0.2, steps=5, p_adv=0.5) if robust else None
        ad = ModelDistillation(distilled_model=student, model=net, loss_type="kld")
        ad.fit(x_train, epochs=20, verbose=False, seed=0, augment_fn=augment)
        detectors[name] = ad
    x_adv = attacks.pgd(net, x, y, 0.2, steps=20, seed=0, verbose=False)
    fooled = predict_batch(x_adv, net).argmax(1) != y
    assert fooled.mean() > 0.5
    auroc = {}
    for name, ad in detectors.items():
        auroc[name] = auroc_of(ad.score(x_adv[fooled]), ad.score(x[fooled]))
    assert auroc["robust"] > auroc["plain"] + 0.08, auroc
