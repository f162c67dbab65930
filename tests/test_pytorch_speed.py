"""The optimised torch paths (backends/torch/fast.py) agree with the plain ones and are safe.

No timing here: the benchmark (benchmarks/) measures speed. These tests check that the fast
paths give the plain forward's outputs (within 1e-5 on probabilities), the plain training
step's weights, never modify the user's model, never return stale outputs after the model
changes, and step aside for hooks and unknown modules.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from distilldetect import ModelDistillation
from distilldetect.backends.torch import fast as pf
from distilldetect.backends.torch import runtime as tb
from distilldetect.backends.torch import seed_student
from distilldetect.backends.torch.models import cnn_classifier, distilled_model_cifar10, resnet


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (a trained look)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def plain_probs(model: nn.Module, X: np.ndarray) -> np.ndarray:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(X)).numpy()
    model.train(was)
    return out


def fast_probs(model: nn.Module, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    batch_size = batch_size or len(X)
    with tb.inference(model) as forward:
        return np.concatenate(
            [forward(X[i : i + batch_size]) for i in range(0, len(X), batch_size)]
        )


def state(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((70, 32, 32, 3), dtype=np.float32)


@pytest.fixture
def teacher() -> nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorm(resnet(num_blocks=1, widths=(8, 16, 32)))


def test_work_measure_keeps_small_models_on_the_plain_path():
    """The split and the composition are chosen from counted operations, not timing."""
    torch.manual_seed(0)
    small = distilled_model_cifar10(input_shape=(28, 28), nb_filters1=32)
    big = distilled_model_cifar10()
    assert not seed_student.composable(small) and seed_student.composable(big)
    x = torch.zeros(128, 28, 28)
    small.train()
    flops = pf.flops_per_row(small, x)
    assert small.training, "counting operations changed the model's mode"
    assert flops == pf.flops_per_row(small, x) > 0
    assert 128 * 3 * flops < pf.MIN_WORK_TO_SPLIT  # a training step of it is not split
    assert 128 * 3 * pf.flops_per_row(big, torch.zeros(128, 32, 32, 3)) >= pf.MIN_WORK_TO_SPLIT


# ------------------------------------------------------------------------- inference
@pytest.mark.parametrize("batch_size", [1, 7, 64, 70])
def test_fast_teacher_matches_plain_forward(teacher, images, workers, batch_size):
    expected = plain_probs(teacher, images)
    got = fast_probs(teacher, images, batch_size)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert pf.frozen(teacher) is not teacher, "a ResNet's BatchNorms should have been folded"


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28), (16, 20, 3), (30, 30, 3), (7, 7)])
def test_fast_student_matches_plain_forward(workers, shape):
    torch.manual_seed(1)
    student = distilled_model_cifar10(input_shape=shape)
    X = np.random.default_rng(1).random((20, *shape), dtype=np.float32)
    np.testing.assert_allclose(fast_probs(student, X), plain_probs(student, X), rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        fast_probs(student, X, 3), plain_probs(student, X), rtol=0, atol=1e-5
    )


def test_composed_student_is_exact_in_float64():
    torch.manual_seed(2)
    student = distilled_model_cifar10().double()
    x = torch.rand(6, 32, 32, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            seed_student.composed_logits(student, x),
            student.forward_logits(x),
            rtol=1e-12,
            atol=1e-12,
        )


def test_batchnorm_cnn_and_sequential_are_folded(images, workers):
    torch.manual_seed(3)
    cnn = randomise_batchnorm(cnn_classifier((32, 32, 3), batch_norm=True, filters=(8, 8)))
    seq = randomise_batchnorm(
        nn.Sequential(
            nn.Conv2d(32, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 30 * 1, 5),
            nn.Softmax(-1),
        )
    )
    X = images[:20]
    for model in (cnn, seq):
        np.testing.assert_allclose(fast_probs(model, X), plain_probs(model, X), rtol=0, atol=1e-5)
        assert pf.frozen(model) is not model


def test_user_model_is_never_modified(teacher, images, workers):
    teacher.train()
    before = state(teacher)
    flags = [p.requires_grad for p in teacher.parameters()]
    fast_probs(teacher, images, 32)
    assert all(torch.equal(a, b) for a, b in zip(before, state(teacher), strict=True))
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert all(p.grad is None for p in teacher.parameters())
    assert teacher.training, "training mode was not restored"
    fast = pf.frozen(teacher)
    own = {t.data_ptr() for t in teacher.state_dict().values()}
    assert not own & {t.data_ptr() for t in fast.state_dict().values()}, "the copy shares storage"


def test_no_autograd_in_fast_inference(teacher, images, workers):
    student = distilled_model_cifar10()
    for model in (teacher, student):
        with tb.inference(model) as forward:
            out = forward(images[:9])
        assert isinstance(out, np.ndarray)
    assert all(p.grad is None for p in student.parameters())


# ------------------------------------------------------------------ never stale outputs
def test_weight_changes_are_seen(teacher, images, workers):
    X = images[:16]
    fast_probs(teacher, X)  # builds and caches the folded copy
    changes = [
        lambda m: m.head.weight.data.mul_(3.0),  # in place, through .data
        lambda m: m.blocks[0].bn1.running_var.mul_(4.0),  # a buffer
        lambda m: m.load_state_dict(randomise_batchnorm(copy.deepcopy(m), seed=7).state_dict()),
        lambda m: setattr(m.blocks[1].bn2, "eps", 0.5),  # a setting
        lambda m: setattr(m, "head", nn.Linear(32, 10)),  # a replaced sub-module
        lambda m: setattr(m.stem[0], "weight", nn.Parameter(torch.randn_like(m.stem[0].weight))),
    ]
    for change in changes:
        with torch.no_grad():
            change(teacher)
        np.testing.assert_allclose(
            fast_probs(teacher, X), plain_probs(teacher, X), rtol=0, atol=1e-5
        )


def test_student_trained_between_scores_is_seen(images, workers):
    torch.manual_seed(4)
    student = distilled_model_cifar10()
    X = images[:32]
    first = fast_probs(student, X)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    loss = student(torch.from_numpy(X)).square().sum()
    loss.backward()
    opt.step()
    second = fast_probs(student, X)
    assert np.abs(second - first).max() > 1e-4
    np.testing.assert_allclose(second, plain_probs(student, X), rtol=0, atol=1e-5)


# --------------------------------------------------------------- stepping aside
def test_hooks_see_the_model_run_once_per_batch(teacher, images, workers):
    calls = []
    handle = teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        got = fast_probs(teacher, images, 35)
    finally:
        handle.remove()
    assert calls == [35, 35]
    np.testing.assert_allclose(got, plain_probs(teacher, images), rtol=0, atol=1e-6)


class BatchCentred(nn.Module):
    """A layer whose output depends on the other rows: must never be split into blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(0, keepdim=True)


def test_unknown_modules_run_as_they_are(images, workers):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), BatchCentred(), nn.Linear(32 * 32 * 3, 4), nn.Softmax(-1))
    assert not pf.is_known_model(model)
    np.testing.assert_array_equal(fast_probs(model, images), plain_probs(model, images))


def test_subclass_of_a_zoo_model_is_not_trusted():
    from distilldetect.backends.torch.models import DistilledCifar10

    class Changed(DistilledCifar10):
        def logits(self, x):
            return super().logits(x) * 2

    model = Changed()
    assert not seed_student.composable(model) and not pf.is_known_model(model)
    X = np.random.default_rng(2).random((4, 32, 32, 3), dtype=np.float32)
    np.testing.assert_array_equal(fast_probs(model, X), plain_probs(model, X))


def test_worker_pool_keeps_the_callers_thread_count(teacher, images):
    threads = torch.get_num_threads()
    blocks = pf.run_in_blocks(lambda rows: (rows, pf.n_workers()), 10, 2)
    assert [b[0] for b in blocks] == [slice(0, 5), slice(5, 10)]
    assert all(b[1] == 1 for b in blocks), "a worker would split again"
    assert torch.get_num_threads() == threads


# ------------------------------------------------------------------------- training
def train(student: nn.Module, X: np.ndarray, P: np.ndarray, steps: int = 3, **kw) -> nn.Module:
    with tb.Trainer(student, seed=0, **kw) as trainer:
        for s in range(steps):
            trainer.step(X[s::steps], P[s::steps])
    return student


def plain_train(student: nn.Module, X: np.ndarray, P: np.ndarray, steps: int = 3) -> nn.Module:
    """The reference: the plain module forward and loss.backward() (no fast path)."""
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    dtype = tb.model_dtype(student)
    student.train()
    for s in range(steps):
        xt = torch.from_numpy(X[s::steps]).to(dtype)
        pt = torch.from_numpy(P[s::steps]).to(dtype)
        loss = tb.distillation_loss(pt, student(xt)).mean() + student.regularization_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return student


@pytest.mark.parametrize("shape", [(32, 32, 3), (30, 30, 3)])
def test_fast_training_matches_plain_training_in_float64(workers, shape):
    torch.manual_seed(6)
    student = distilled_model_cifar10(input_shape=shape).double()
    reference = copy.deepcopy(student)
    rng = np.random.default_rng(3)
    X = rng.random((48, *shape))
    P = rng.dirichlet(np.ones(10), 48)
    train(student, X, P)
    plain_train(reference, X, P)
    for a, b in zip(student.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_fast_training_matches_plain_training_in_float32(workers):
    torch.manual_seed(7)
    student = distilled_model_cifar10()
    reference = copy.deepcopy(student)
    rng = np.random.default_rng(4)
    X = rng.random((48, 32, 32, 3), dtype=np.float32)
    P = rng.dirichlet(np.ones(10), 48).astype(np.float32)
    init = copy.deepcopy(student)
    train(student, X, P, steps=2)
    plain_train(reference, X, P, steps=2)
    # Adam divides by the gradients' running RMS, so float32 rounding in a near-zero gradient
    # can move a weight by up to a few 1e-5; each step moves weights by ~lr = 1e-3.
    for a, b, c in zip(
        student.parameters(), reference.parameters(), init.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
        assert (a - c).abs().max() > 1e-3


def test_parallel_fit_is_reproducible(workers):
    torch.manual_seed(8)
    init = distilled_model_cifar10()
    teacher = lambda x: np.full((len(x), 10), 0.1, np.float32)  # noqa: E731
    X = np.random.default_rng(5).random((40, 32, 32, 3), dtype=np.float32)
    runs = []
    for _ in range(2):
        student = copy.deepcopy(init)
        ModelDistillation(distilled_model=student, model=teacher).fit(
            X, epochs=2, batch_size=20, verbose=False, seed=1
        )
        runs.append(state(student))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_students_with_dropout_or_batchnorm_are_not_split(monkeypatch):
    monkeypatch.setattr(pf, "n_workers", lambda: 2)
    monkeypatch.setattr(pf, "MIN_WORK_TO_SPLIT", 0)
    for student in (
        nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3), nn.Softmax(-1)),
        nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3), nn.Softmax(-1)),
    ):
        params = list(student.parameters())
        x, p = torch.rand(32, 4), torch.full((32, 3), 1 / 3)
        assert pf.parallel_gradients(student, params, x, p, lambda a, b: (a * b).sum()) is None


# ------------------------------------------------------------------------ TorchScript tier
def test_scripted_teacher_matches_plain_forward_and_follows_changes(
    teacher, images, workers, monkeypatch
):
    monkeypatch.setattr(pf, "JIT_AFTER_ROWS", 0)
    for batch_size in (64, 7):
        np.testing.assert_allclose(
            fast_probs(teacher, images, batch_size), plain_probs(teacher, images), atol=1e-5, rtol=0
        )
    entry = pf._FROZEN[teacher]
    assert any(m is not None for m in entry.jit.values()), "no TorchScript module was built"
    with torch.no_grad():
        teacher.blocks[0].conv1.weight.data.mul_(-1.0)
    np.testing.assert_allclose(
        fast_probs(teacher, images, 64), plain_probs(teacher, images), atol=1e-5, rtol=0
    )


def test_scripting_waits_for_enough_rows(teacher, images, monkeypatch):
    monkeypatch.setattr(pf, "JIT_AFTER_ROWS", 10_000)
    fast_probs(teacher, images)
    assert pf._FROZEN[teacher].jit == {}


@pytest.mark.parametrize("with_grad", [True, False])
def test_parallel_step_adds_a_user_regulariser(workers, with_grad):
    from distilldetect.backends.torch.models import mlp

    torch.manual_seed(9)
    student = mlp((8, 8), 10, (16,)).double()
    reference = copy.deepcopy(student)
    for model in (student, reference):
        if with_grad:
            model.regularization_loss = lambda m=model: 1e-3 * m.net[0].weight.square().sum()
        else:
            model.regularization_loss = lambda: torch.tensor(0.5, dtype=torch.float64)
    rng = np.random.default_rng(6)
    X, P = rng.random((40, 8, 8)), rng.dirichlet(np.ones(10), 40)
    with tb.Trainer(student) as trainer:
        loss, _ = trainer.step(X, P)
    plain_train(reference, X, P, steps=1)
    assert np.isfinite(loss)
    for a, b in zip(student.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------ optimize=True: models of unknown code
class UserNet(nn.Module):
    """A user's own model (not known to the speed code): conv + BN + residual, NCHW."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x))) + x.mean(1, keepdim=True)
        return torch.softmax(self.head(h.mean((2, 3))), dim=-1)


class Untraceable(UserNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > 0:  # data-dependent control flow: torch.fx cannot trace it
            return super().forward(x)
        return super().forward(-x)


@pytest.mark.parametrize("cls", [UserNet, Untraceable])
def test_optimize_runs_a_users_model_faster_path_with_the_same_outputs(cls):
    torch.manual_seed(0)
    teacher = randomise_batchnorm(cls()).eval()
    student = cls()
    X = np.random.default_rng(0).random((300, 3, 16, 16), dtype=np.float32)
    plain = ModelDistillation(distilled_model=student, model=teacher).score(X)
    fast = ModelDistillation(distilled_model=student, model=teacher, optimize=True)
    assert not pf.is_known_model(teacher)
    np.testing.assert_allclose(fast.score(X), plain, rtol=1e-5, atol=1e-6)
    assert pf._FROZEN[teacher].optimize  # the optimised copy was built and cached
    with torch.no_grad():
        teacher.head.weight.mul_(2)  # changed weights: the copy is rebuilt, never stale
    again = ModelDistillation(distilled_model=student, model=teacher).score(X)
    np.testing.assert_allclose(fast.score(X), again, rtol=1e-5, atol=1e-6)
    assert not np.allclose(again, plain)


def test_optimize_fits_a_users_student_like_the_plain_path(workers):
    torch.manual_seed(0)
    teacher = randomise_batchnorm(UserNet()).eval()
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10), nn.Softmax(-1))

    class Wrapped(nn.Module):  # unknown code without dropout or BN: splittable when optimised
        def __init__(self) -> None:
            super().__init__()
            self.inner = copy.deepcopy(student)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    X = np.random.default_rng(1).random((256, 3, 16, 16), dtype=np.float32)
    a, b = Wrapped(), Wrapped()
    ModelDistillation(distilled_model=a, model=teacher).fit(X, epochs=2, verbose=False, seed=0)
    ModelDistillation(distilled_model=b, model=teacher, optimize=True).fit(
        X, epochs=2, verbose=False, seed=0
    )
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- sealing
def test_sealed_model_gives_the_same_outputs_and_skips_the_weight_check(teacher, images):
    """Sealing is a promise: outputs are unchanged; a change made anyway is not seen while
    sealed (the per-call check is what sealing skips) and is seen again once unsealed."""
    expected = plain_probs(teacher, images)
    teacher.train()
    tb.seal(teacher)
    try:
        assert pf.is_sealed(teacher) and not teacher.training  # sealed in eval mode
        for batch_size in (1, 7, 70):
            np.testing.assert_allclose(
                fast_probs(teacher, images, batch_size), expected, rtol=0, atol=1e-5
            )
        with torch.no_grad():
            teacher.head.weight.mul_(3.0)
        np.testing.assert_allclose(fast_probs(teacher, images), expected, rtol=0, atol=1e-5)
    finally:
        tb.seal(teacher, False)
    assert not pf.is_sealed(teacher)
    changed = plain_probs(teacher, images)
    assert np.abs(changed - expected).max() > 1e-3
    np.testing.assert_allclose(fast_probs(teacher, images), changed, rtol=0, atol=1e-5)


def test_training_withdraws_the_seal(images):
    torch.manual_seed(2)
    student = distilled_model_cifar10()
    tb.seal(student)
    p = np.full((8, 10), 0.1, dtype=np.float32)
    with tb.Trainer(student, learning_rate=0.1, seed=0) as trainer:
        assert not pf.is_sealed(student)
        trainer.step(images[:8], p)
    np.testing.assert_allclose(
        fast_probs(student, images[:8]), plain_probs(student, images[:8]), rtol=0, atol=1e-5
    )


def test_sealed_unknown_model_keeps_its_lock(images):
    """A sealed model off the fast path (code not known, no optimize) still runs under its
    lock: its forward might change state. One on the fast path runs without it."""

    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(12, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            assert tb.model_lock(self)._is_owned(), "ran without the model's lock"
            return torch.softmax(self.lin(x.reshape(len(x), -1)[:, :12]), -1)

    net = Counter()
    tb.seal(net)
    with tb.inference(net) as forward:
        forward(images[:3])
    assert net.calls == 1
    known = resnet(num_blocks=1, widths=(8, 16, 32))
    tb.seal(known)
    seen = []
    real = pf.FastForward.__call__

    def spy(self, x):
        seen.append(tb.model_lock(self.model)._is_owned())
        return real(self, x)

    pf.FastForward.__call__ = spy
    try:
        with tb.inference(known) as forward:
            forward(images[:3])
    finally:
        pf.FastForward.__call__ = real
    assert seen == [False]


def test_small_unsplit_batches_run_on_one_worker_and_larger_ones_in_the_caller(
    teacher, images, monkeypatch
):
    """Too little work to split: up to MAX_ROWS_ON_ONE_THREAD rows go to one single-threaded
    worker, more rows run in the calling thread (torch's intra-op threads). Same outputs."""
    if pf.n_workers() < 2:
        pytest.skip("needs two torch threads")
    submitted: list[int] = []
    real_pool = pf._pool

    class Spy:
        def __init__(self, pool):
            self.pool = pool

        def submit(self, fn, *args):
            submitted.append(1)
            return self.pool.submit(fn, *args)

    monkeypatch.setattr(pf, "_pool", lambda size: Spy(real_pool(size)))
    monkeypatch.setattr(pf, "MIN_WORK_TO_SPLIT", 10**15)  # nothing is split here
    expected = plain_probs(teacher, images)
    np.testing.assert_allclose(fast_probs(teacher, images, 7), expected, rtol=0, atol=1e-5)
    assert len(submitted) == 10  # ten batches of <= 7 rows, each on a worker
    submitted.clear()
    monkeypatch.setattr(pf, "MAX_ROWS_ON_ONE_THREAD", 5)
    np.testing.assert_allclose(fast_probs(teacher, images, 70), expected, rtol=0, atol=1e-5)
    assert submitted == []  # 70 rows > 5: the calling thread
