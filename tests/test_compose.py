"""Composing two convolutions with nothing between them (backends/torch/compose.py).

The composition must give the plain forward's outputs and gradients (up to float rounding) for
every supported geometry, fall back to the plain forward where it cannot, share the model's
parameters, and be used by ``optimize=True`` for a student written outside the zoo.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from distilldetect import ModelDistillation  # noqa: E402
from distilldetect.backends.torch import compose  # noqa: E402
from distilldetect.backends.torch import fast as pf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from user_models import UserResNet20, UserStudent  # noqa: E402


@pytest.fixture(autouse=True)
def _compose_everything(monkeypatch):
    # small test models: compose whatever the cost, so the composed path is what is tested
    monkeypatch.setattr(compose, "MIN_MACS_TO_COMPOSE", 0)


def _pair(cin, mid, cout, k1, s1, p1, k2, s2, p2, bias=True):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(cin, mid, k1, s1, p1, bias=bias), nn.Conv2d(mid, cout, k2, s2, p2, bias=bias)
    )


GEOMETRIES = [
    # (k1, s1, p1, k2, s2, p2, size)
    (4, 2, 1, 4, 2, 1, 32),  # the seed's layout, symmetric padding
    (4, 2, 1, 4, 2, 1, 31),  # odd size: conv2 reads no ring row at the end
    (3, 1, 1, 3, 1, 1, 13),  # 'same'-like stride 1
    (5, 2, 2, 3, 2, 1, 28),
    (3, 2, 0, 3, 2, 0, 17),  # no padding: no ring at all
    (2, 2, 0, 4, 1, 1, 16),
    (1, 1, 0, 3, 2, 1, 9),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_composed_pair_matches_the_two_convolutions(geometry, bias):
    k1, s1, p1, k2, s2, p2, size = geometry
    net = _pair(3, 6, 5, k1, s1, p1, k2, s2, p2, bias)
    fast, n = compose.compose_conv_pairs(net)
    assert n == 1
    pair = next(m for m in fast.modules() if isinstance(m, compose.ComposedConvPair))
    assert pair.plan(size, size) is not None, "this geometry should be supported"
    x = torch.rand(3, 3, size, size, requires_grad=True)
    want = net(x)
    got = fast(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # gradients reach the shared parameters and the input exactly as through the plain path
    w = torch.rand_like(want)
    g_plain = torch.autograd.grad((want * w).sum(), [x, *net.parameters()])
    g_fast = torch.autograd.grad((got * w).sum(), [x, *net.parameters()])
    for a, b in zip(g_fast, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the in-place inference path too
        torch.testing.assert_close(fast(x), net(x), rtol=1e-4, atol=1e-5)


def test_unsupported_geometry_falls_back_to_the_plain_forward():
    net = _pair(3, 6, 5, 3, 1, 1, 5, 1, 2, True)  # conv2 pads by 2: two ring rows
    fast, n = compose.compose_conv_pairs(net)
    pair = next(m for m in fast.modules() if isinstance(m, compose.ComposedConvPair))
    assert n == 1 and pair.plan(12, 12) is None
    x = torch.rand(2, 3, 12, 12)
    torch.testing.assert_close(fast(x), net(x))


def test_only_direct_edges_are_composed():
    class Skip(nn.Module):  # conv1's output used twice, then a ReLU between two others
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 3, 1, 1), nn.Conv2d(3, 3, 3, 1, 1)
            self.c, self.d = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            h = self.b(h) + h
            return self.d(torch.relu(self.c(h)))

    model = Skip()
    assert compose.compose_conv_pairs(model) == (model, 0)
    dilated = nn.Sequential(nn.Conv2d(3, 4, 3, dilation=2), nn.Conv2d(4, 4, 3))
    assert compose.compose_conv_pairs(dilated)[1] == 0


def test_composed_module_shares_the_parameters_and_follows_updates():
    net = _pair(3, 8, 4, 4, 2, 1, 4, 2, 1)
    fast, _ = compose.compose_conv_pairs(net)
    assert {id(p) for p in fast.parameters()} == {id(p) for p in net.parameters()}
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        net[0].weight.mul_(-2)
    torch.testing.assert_close(fast(x), net(x), rtol=1e-4, atol=1e-5)
    frozen, _ = compose.compose_conv_pairs(copy.deepcopy(net), frozen=True)
    before = frozen(x)
    torch.testing.assert_close(before, net(x), rtol=1e-4, atol=1e-5)


def test_untraceable_forward_is_left_as_it_is():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x)) if float(x.sum()) > 0 else x

    model = Branchy()
    assert compose.compose_conv_pairs(model) == (model, 0)
    assert pf.composed_student(model, torch.rand(2, 3, 8, 8)) is model


def test_composed_student_is_rebuilt_when_a_module_is_replaced():
    student = _pair(3, 8, 4, 4, 2, 1, 4, 2, 1)
    x = torch.rand(4, 3, 16, 16)
    first = pf.composed_student(student, x)
    assert first is not student
    assert pf.composed_student(student, x) is first  # cached
    student[1] = nn.Conv2d(8, 4, 4, 2, 1)
    second = pf.composed_student(student, x)
    assert second is not first
    torch.testing.assert_close(second(x), student(x), rtol=1e-4, atol=1e-5)


def test_a_graph_that_disagrees_is_not_used():
    a = _pair(3, 8, 4, 4, 2, 1, 4, 2, 1)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[0].weight.add_(1.0)
    x = torch.rand(2, 3, 16, 16)
    assert pf._agrees(a, copy.deepcopy(a), x)
    assert not pf._agrees(a, b, x)


def test_optimize_trains_a_users_student_through_the_composition(workers):
    """``optimize=True`` on the benchmark's user-written student (its first convolution is
    linear): the composed graph is used, and training reaches the plain path's weights."""
    torch.manual_seed(0)
    teacher = UserResNet20().eval()
    X = np.random.default_rng(0).random((256, 3, 32, 32), dtype=np.float32)
    torch.manual_seed(1)
    a = UserStudent()
    b = copy.deepcopy(a)
    ModelDistillation(distilled_model=a, model=teacher).fit(X, epochs=2, verbose=False, seed=0)
    fast = ModelDistillation(distilled_model=b, model=teacher, optimize=True)
    fast.fit(X, epochs=2, verbose=False, seed=0)
    assert isinstance(pf._COMPOSED[b].module, torch.fx.GraphModule)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=2e-3, atol=2e-5)
    plain = ModelDistillation(distilled_model=a, model=teacher).score(X)
    np.testing.assert_allclose(fast.score(X), plain, rtol=2e-3, atol=1e-6)
