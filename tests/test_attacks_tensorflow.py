"""FGSM, PGD, C&W and the adaptive PGD on tf.keras models (``backends/tensorflow/attacks.py``), against the torch
attacks on a torch twin with the same weights; the attacks written for torch only say so."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")

from distilldetect import attacks  # noqa: E402
from distilldetect.backends.tensorflow.runtime import keras  # noqa: E402
from distilldetect.utils import predict_batch  # noqa: E402


@pytest.fixture(scope="module")
def twins(attack_digits):
    """The digits MLP teacher and a tf.keras copy of it (same weights, same outputs)."""
    net, _, x, y = attack_digits
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    k = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Flatten(),
            keras.layers.Dense(linears[0].out_features, activation="relu"),
            keras.layers.Dense(linears[1].out_features, activation="softmax"),
        ]
    )
    for layer, lin in zip(k.layers[1:], linears, strict=True):
        layer.set_weights([lin.weight.detach().numpy().T, lin.bias.detach().numpy()])
    np.testing.assert_allclose(predict_batch(x, k), predict_batch(x, net), atol=1e-5)
    return net, k, x[:100], y[:100]


def test_fgsm_on_keras_equals_fgsm_on_the_torch_twin(twins):
    net, k, x, y = twins
    ours = attacks.fgsm(k, x, y, 0.1, clip=(0.0, 1.0), verbose=False)
    theirs = attacks.fgsm(net, x, y, 0.1, clip=(0.0, 1.0), verbose=False)
    # the same gradient signs: pixels differ only where a gradient is ~0 (sign ties)
    assert np.mean(np.isclose(ours, theirs, atol=1e-6)) > 0.999
    assert np.abs(ours - x).max() <= 0.1 + 1e-6 and ours.min() >= 0.0 and ours.max() <= 1.0


@pytest.mark.parametrize("norm, eps", [("linf", 0.15), ("l2", 1.0)])
def test_pgd_on_keras_matches_the_torch_twin_and_stays_in_the_ball(twins, norm, eps):
    net, k, x, y = twins
    kwargs = {"norm": norm, "steps": 10, "random_start": False, "verbose": False}
    ours = attacks.pgd(k, x, y, eps, **kwargs)
    theirs = attacks.pgd(net, x, y, eps, **kwargs)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    delta = (ours - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert size.max() <= eps + 1e-5
    fooled = (predict_batch(ours, k).argmax(1) != y).mean()
    assert fooled > 0.5, fooled


def test_pgd_on_keras_random_start_is_seeded(twins):
    _, k, x, y = twins
    a = attacks.pgd(k, x[:20], y[:20], 0.1, steps=2, seed=3, verbose=False)
    b = attacks.pgd(k, x[:20], y[:20], 0.1, steps=2, seed=3, verbose=False)
    c = attacks.pgd(k, x[:20], y[:20], 0.1, steps=2, seed=4, verbose=False)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_carlini_wagner_on_keras_finds_what_the_torch_twin_finds(twins):
    net, k, x, y = twins
    x, y = x[:40], y[:40]
    kwargs = {"steps": 30, "binary_search_steps": 3, "verbose": False}
    ours = attacks.carlini_wagner_l2(k, x, y, 0.5, **kwargs)
    theirs = attacks.carlini_wagner_l2(net, x, y, 0.5, **kwargs)
    assert np.abs(ours - x).max() <= 0.5 + 1e-6
    ok_ours = predict_batch(ours, k).argmax(1) != y
    ok_theirs = predict_batch(theirs, net).argmax(1) != y
    assert ok_ours.mean() > 0.9 and abs(ok_ours.mean() - ok_theirs.mean()) <= 0.05
    # the same objective from nearly the same start (w ~ N(0, 1e-6), drawn by each backend)
    l2_ours = np.linalg.norm((ours - x).reshape(len(x), -1), axis=1)[ok_ours & ok_theirs]
    l2_theirs = np.linalg.norm((theirs - x).reshape(len(x), -1), axis=1)[ok_ours & ok_theirs]
    np.testing.assert_allclose(np.median(l2_ours), np.median(l2_theirs), rtol=0.05)


def test_adaptive_pgd_on_keras_teacher_and_student_matches_the_torch_twins(twins):
    net, k, x, y = twins
    x, y = x[:60], y[:60]
    # a student: the teacher's twin with its last layer perturbed, in both frameworks
    torch.manual_seed(5)
    student = copy.deepcopy(net)
    with torch.no_grad():
        last = [m for m in student.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.add_(0.3 * torch.randn_like(last.weight))
    k_student = keras.models.clone_model(k)
    k_student.set_weights(k.get_weights())
    k_student.layers[-1].set_weights([last.weight.detach().numpy().T, last.bias.detach().numpy()])
    kwargs = {"lam": 1.0, "steps": 10, "random_start": False, "verbose": False}
    ours = attacks.adaptive_pgd(k, k_student, x, y, 0.15, **kwargs)
    theirs = attacks.adaptive_pgd(net, student, x, y, 0.15, **kwargs)
    assert np.abs(ours - x).max() <= 0.15 + 1e-6
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_adaptive_pgd_refuses_students_of_another_framework(twins):
    net, k, x, y = twins
    with pytest.raises(TypeError, match="same framework"):
        attacks.adaptive_pgd(k, net, x[:4], y[:4], 0.1, verbose=False)
    with pytest.raises(TypeError, match="same framework"):
        attacks.adaptive_pgd(net, k, x[:4], y[:4], 0.1, verbose=False)


def test_adversarial_augment_on_keras_matches_the_torch_twin(twins):
    """The robust student's augmenter on a Keras student: the same rows, random starts and
    PGD steps as on its torch twin (same weights), within the ball and the clip."""
    from distilldetect.augment import adversarial_augment

    net, k, x, _ = twins
    kwargs = {"eps": 0.15, "steps": 4, "p_adv": 0.5, "clip": (0.0, 1.0)}
    ours = adversarial_augment(k, **kwargs)(x, np.random.default_rng(3))
    theirs = adversarial_augment(net, **kwargs)(x, np.random.default_rng(3))
    assert ours.shape == x.shape and ours.dtype == x.dtype
    moved = np.abs(ours - x).reshape(len(x), -1).max(1) > 0
    assert 0.3 < moved.mean() < 0.7 and np.array_equal(ours[~moved], x[~moved])
    assert np.abs(ours - x).max() <= 0.15 + 1e-6 and ours.min() >= 0.0 and ours.max() <= 1.0
    # the same signed steps: pixels differ only where a gradient is ~0 (sign ties)
    assert np.mean(np.isclose(ours, theirs, atol=1e-5)) > 0.999
    again = adversarial_augment(k, **kwargs)(x, np.random.default_rng(3))
    assert np.array_equal(ours, again)


def test_a_robust_keras_student_is_much_harder_to_move(twins, attack_digits):
    """Trained with the augmenter, a Keras student's output moves far less under a PGD attack
    on the student itself (the KL between its clean and attacked outputs) than the same
    student's trained without it: same seed, data and epochs."""
    from distilldetect import ModelDistillation
    from distilldetect.augment import adversarial_augment

    _, k, x, _ = twins
    x_train = attack_digits[1]
    moved = {}
    for name, robust in (("plain", False), ("robust", True)):
        keras.utils.set_random_seed(7)
        student = keras.Sequential(
            [
                keras.Input((8, 8)),
                keras.layers.Flatten(),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        augment = adversarial_augment(student, eps=0.2, steps=5, p_adv=0.5) if robust else None
        ad = ModelDistillation(distilled_model=student, model=k, loss_type="kld")
        ad.fit(x_train, epochs=20, verbose=False, seed=0, augment_fn=augment)
        x_att = adversarial_augment(student, eps=0.2, steps=10, p_adv=1.0)(
            x, np.random.default_rng(0)
        )
        p, q = (np.clip(predict_batch(v, student), 1e-12, 1) for v in (x, x_att))
        moved[name] = float((p * (np.log(p) - np.log(q))).sum(1).mean())
        # it still distils the teacher on clean images
        agree = (predict_batch(x, student).argmax(1) == predict_batch(x, k).argmax(1)).mean()
        assert agree > 0.85, (name, agree)
    assert moved["robust"] < 0.5 * moved["plain"], moved


def test_keras_fresh_copy_redraws_initializers_with_seeds_of_their_own():
    from distilldetect.backends import get_backend

    net = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed=1)),
        ]
    )
    backend = get_backend("tensorflow")
    a, b, c = (backend.fresh_copy(net, s) for s in (0, 0, 1))
    assert np.array_equal(a.get_weights()[0], b.get_weights()[0])
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])
