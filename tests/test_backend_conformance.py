"""The backend contract (``distilldetect.backends.Backend``), checked for every framework.

One suite, parametrised over the frameworks, as scikit-learn's estimator checks are run over
every estimator: inference restores modes and is safe from many threads, the teacher is never
trained, the training loss equals the numpy score maths, seeding reproduces, the optimizer
rules hold, and saved models load back to the same outputs.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from distilldetect import ModelDistillation, load_detector, losses, save_detector
from distilldetect.backends import FRAMEWORKS, Backend, get_backend
from distilldetect.models import build_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(params=FRAMEWORKS)
def framework(request):
    if request.param == "tensorflow":
        pytest.importorskip("tensorflow")
    return request.param


@pytest.fixture
def backend(framework):
    return get_backend(framework)


def make(framework, seed, hidden=(16,), dropout=0.0):
    get_backend(framework).manual_seed(seed)
    return build_model(
        "mlp", framework, input_shape=(8, 8), num_classes=10, hidden=hidden, dropout=dropout
    )


def weights(model, framework):
    if framework == "pytorch":
        return [t.detach().clone().numpy() for t in model.state_dict().values()]
    return [np.array(w) for w in model.get_weights()]


def modes(model, framework):
    if framework == "pytorch":
        return [m.training for m in model.modules()]
    return [layer.trainable for layer in model.layers]


def test_backend_satisfies_the_protocol(backend, framework):
    assert isinstance(backend, Backend)
    assert backend.FRAMEWORK == framework
    assert backend.is_model(make(framework, 0))
    assert not backend.is_model(lambda x: x)


def test_n_trainable_parameters(backend, framework):
    assert backend.n_trainable_parameters(make(framework, 0, hidden=(16,))) == 64 * 16 + 16 + 170


@pytest.mark.parametrize("loss_type", ["kld", "xent"])
def test_training_loss_equals_the_numpy_score(backend, loss_type):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5) * 0.3, size=32).astype(np.float32)
    q = rng.dirichlet(np.ones(5), size=32).astype(np.float32)
    q[0] = [1, 0, 0, 0, 0]  # clipping at the edges
    got = np.asarray(_loss(backend, p, q, loss_type))
    expected = losses.distillation_score(p, q, loss_type)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


def _loss(backend, p, q, loss_type):
    if backend.FRAMEWORK == "pytorch":
        import torch

        return backend.distillation_loss(
            torch.from_numpy(p), torch.from_numpy(q), loss_type
        ).numpy()
    return backend.distillation_loss(p, q, loss_type).numpy()


def test_inference_restores_modes_and_never_trains(backend, framework, digits):
    teacher = make(framework, 0, dropout=0.5)
    if framework == "pytorch":
        teacher.train()
        teacher.net[1].eval()  # a mixed state must come back exactly
    before_modes, before_weights = modes(teacher, framework), weights(teacher, framework)
    with backend.inference(teacher) as forward:
        a = forward(digits[2][:64])
        b = forward(digits[2][:64])
    np.testing.assert_array_equal(a, b)  # eval mode: dropout off, deterministic
    assert modes(teacher, framework) == before_modes
    for x, y in zip(before_weights, weights(teacher, framework), strict=True):
        np.testing.assert_array_equal(x, y)


def test_fit_never_trains_the_teacher(framework, digits):
    teacher, student = make(framework, 0), make(framework, 1, hidden=(8,))
    before = weights(teacher, framework)
    ModelDistillation(distilled_model=student, model=teacher).fit(
        digits[0][:200], epochs=1, verbose=False, seed=0
    )
    for x, y in zip(before, weights(teacher, framework), strict=True):
        np.testing.assert_array_equal(x, y)


def test_seeding_reproduces(framework, digits):
    def fitted():
        ad = ModelDistillation(
            distilled_model=make(framework, 1, dropout=0.2), model=make(framework, 0)
        )
        return ad.fit(digits[0][:256], epochs=2, verbose=False, seed=7)

    a, b = fitted(), fitted()
    for x, y in zip(
        weights(a.distilled_model, framework), weights(b.distilled_model, framework), strict=True
    ):
        np.testing.assert_array_equal(x, y)
    assert a.history == b.history


def test_optimizer_rules(backend, framework):
    student = make(framework, 1)
    if framework == "pytorch":
        import torch

        cls, instance = torch.optim.SGD, torch.optim.SGD(student.parameters(), lr=0.1)
        foreign = torch.optim.SGD(make(framework, 2).parameters(), lr=0.1)
    else:
        import keras

        cls, instance = keras.optimizers.SGD, keras.optimizers.SGD(0.1)
        other = make(framework, 2)
        foreign = keras.optimizers.SGD(0.1)
        foreign.build(other.trainable_variables)
    assert backend.Trainer(student, optimizer=cls, learning_rate=0.5).optimizer is not None
    with pytest.raises(ValueError, match="learning_rate applies only when optimizer is a class"):
        backend.Trainer(student, optimizer=instance, learning_rate=0.5)
    with pytest.raises(ValueError, match="other variables|does not hold any parameter"):
        backend.Trainer(student, optimizer=foreign)
    with pytest.raises(TypeError, match="optimizer must be None"):
        backend.Trainer(student, optimizer="adam")


def _scores_from_threads(
    ad: ModelDistillation, X: np.ndarray, n_threads: int, calls: int
) -> list[np.ndarray]:
    """``ad.score(X, batch_size=16)`` ``calls`` times on each of ``n_threads`` threads started
    together; fails on any thread's error."""
    results: list[np.ndarray] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def work() -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(calls):
                results.append(ad.score(X, batch_size=16))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return results


def test_concurrent_scoring_is_safe_and_equals_serial(framework, digits):
    """Many threads scoring one detector whose teacher was left in train mode (dropout): every
    result equals the serial one, and no module is left in another mode."""
    teacher, student = make(framework, 0, dropout=0.5), make(framework, 1, dropout=0.5)
    ad = ModelDistillation(distilled_model=student, model=teacher)
    ad.fit(digits[0][:128], epochs=1, verbose=False, seed=0)
    if framework == "pytorch":
        teacher.train()
        student.train()  # as fit leaves it
    X = digits[2][:96]
    serial = ad.score(X, batch_size=16)
    before = modes(teacher, framework), modes(student, framework)
    results = _scores_from_threads(ad, X, n_threads=8, calls=5)
    assert len(results) == 40
    for r in results:
        np.testing.assert_array_equal(r, serial)
    assert (modes(teacher, framework), modes(student, framework)) == before


def test_sealed_detector_scores_the_same_from_many_threads_and_fit_unseals(framework, digits):
    """ad.seal(): the same scores, serially and from 4 threads at once; fit withdraws the
    promise for the student, so scores after it follow the new weights."""
    ad = ModelDistillation(distilled_model=make(framework, 1), model=make(framework, 0))
    ad.fit(digits[0][:128], epochs=1, verbose=False, seed=0)
    X = digits[2][:64]
    serial = ad.score(X, batch_size=16)
    assert ad.seal() is ad
    np.testing.assert_allclose(ad.score(X, batch_size=16), serial, rtol=1e-6, atol=1e-9)
    results = _scores_from_threads(ad, X, n_threads=4, calls=3)
    assert len(results) == 12
    for r in results:
        np.testing.assert_allclose(r, serial, rtol=1e-6, atol=1e-9)
    ad.fit(digits[0][128:256], epochs=1, verbose=False, seed=1)
    after = ad.score(X, batch_size=16)
    assert np.abs(after - serial).max() > 1e-6  # the new weights are used
    ad.seal(False)
    np.testing.assert_allclose(ad.score(X, batch_size=16), after, rtol=1e-6, atol=1e-9)
    with pytest.raises(TypeError, match="sealed"):
        ad.seal("yes")


def test_saved_models_load_back_to_the_same_outputs(framework, digits, tmp_path):
    ad = ModelDistillation(distilled_model=make(framework, 1), model=make(framework, 0))
    ad.fit(digits[0][:128], epochs=1, verbose=False, seed=0)
    save_detector(ad, tmp_path / "det")
    loaded = load_detector(tmp_path / "det")
    np.testing.assert_array_equal(loaded.score(digits[2]), ad.score(digits[2]))


def test_train_classifier_restores_modes_and_learns(backend, framework, digits):
    X, y = digits[0][:400], digits[1][:400]
    model = make(framework, 0, dropout=0.1)
    before = modes(model, framework)
    history = backend.train_classifier(model, X, y, epochs=3, seed=0, verbose=False)
    assert len(history) == 3 and history[-1] < history[0]
    assert modes(model, framework) == before


def _plain(framework):
    """A model the zoo does not know (no ``builder_config``): the copy path, not the rebuild."""
    if framework == "pytorch":
        import torch

        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.BatchNorm1d(12),
            torch.nn.ReLU(), torch.nn.Linear(12, 10), torch.nn.Softmax(-1),
        )  # fmt: skip
    from distilldetect.backends.tensorflow.runtime import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Flatten(),
            keras.layers.Dense(12, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


@pytest.mark.parametrize("kind", ["zoo", "plain"])
def test_fresh_copy_draws_new_weights_from_the_seed(backend, framework, kind, digits):
    from distilldetect.utils import predict_batch

    model = make(framework, 0) if kind == "zoo" else _plain(framework)
    before = weights(model, framework)
    a, b, c = (backend.fresh_copy(model, s) for s in (3, 3, 4))
    assert a is not model and backend.is_model(a)
    assert [w.shape for w in weights(a, framework)] == [w.shape for w in before]
    assert all(
        np.array_equal(u, v)
        for u, v in zip(weights(a, framework), weights(b, framework), strict=True)
    )
    assert not np.array_equal(weights(a, framework)[0], weights(c, framework)[0])
    assert not np.array_equal(weights(a, framework)[0], before[0])
    assert all(np.array_equal(u, v) for u, v in zip(weights(model, framework), before, strict=True))
    assert predict_batch(digits[2][:5], a).shape == (5, 10)
    if kind == "zoo":
        assert a.builder_config == model.builder_config


def test_fresh_copy_refuses_weights_it_cannot_draw():
    torch = pytest.importorskip("torch")

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 10)
            self.scale = torch.nn.Parameter(torch.ones(10))

        def forward(self, x):
            return torch.softmax(self.lin(x.flatten(1)) * self.scale, -1)

    with pytest.raises(ValueError, match=r"parameter\(s\) \['scale'\] belong to no sub-module"):
        get_backend("pytorch").fresh_copy(Scaled(), 0)


def test_fresh_copy_follows_a_zoo_model_changed_after_it_was_built():
    torch = pytest.importorskip("torch")

    model = make("pytorch", 0)  # a zoo mlp, builder_config kept
    model.head = torch.nn.Sequential(torch.nn.Linear(10, 7), torch.nn.Softmax(-1))
    copy = get_backend("pytorch").fresh_copy(model, 1)
    assert repr(copy) == repr(model)  # the model as it is, not as the zoo built it
    wide = make("pytorch", 0).double()
    assert next(get_backend("pytorch").fresh_copy(wide, 1).parameters()).dtype == torch.float64


def test_fresh_copy_refuses_a_parameter_behind_a_reparametrisation():
    torch = pytest.importorskip("torch")

    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.utils.spectral_norm(torch.nn.Linear(64, 10)),
        torch.nn.Softmax(-1),
    )  # fmt: skip
    with pytest.raises(ValueError, match="weight_orig"):
        get_backend("pytorch").fresh_copy(net, 0)
