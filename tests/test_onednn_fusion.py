"""The oneDNN-Graph-fused TorchScript chunks of the fast path (``fast.FusedChunks``)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from distilldetect.backends.torch import fast  # noqa: E402


class _Block(nn.Module):
    """conv -> relu -> conv, plus the input: the conv + add + relu pattern oneDNN Graph fuses."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b(F.relu(self.a(x))) + x)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), _Block(8), _Block(8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5), nn.Softmax(-1),
    ).eval()  # fmt: skip


def _plain(net: nn.Module, x: torch.Tensor):
    return torch.jit.optimize_for_inference(fast._trace_frozen(net, x))


def _chunks(net: nn.Module, x: torch.Tensor) -> fast.FusedChunks:
    """Chunks whose fused graphs are compiled now, from rows like ``x``'s."""
    runner = fast.FusedChunks(net, _plain(net, x))
    runner.build(x)
    return runner


@pytest.fixture(autouse=True)
def _fresh_budget(monkeypatch):
    """Each test starts with the whole per-process budget of fused models."""
    monkeypatch.setattr(fast, "_FUSED_MODELS", 0)


@pytest.mark.parametrize("n", [1, 7, 8, 31, 32, 57, 100])
def test_fused_chunks_equal_the_model_for_every_batch_size(n):
    net = _net()
    x = torch.rand(n, 3, 12, 12)
    runner = _chunks(net, x)
    with torch.inference_mode():
        got, expected = runner(x), net(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # every chunk size was built: this torch has oneDNN Graph
    assert sorted(runner.graphs, reverse=True) == list(fast.FUSED_ROWS)
    assert all(runner.graphs[rows] is not None for rows in fast.FUSED_ROWS)


def test_the_global_fusion_switch_is_restored_and_the_users_switch_respected():
    net, x = _net(), torch.rand(40, 3, 12, 12)
    old = torch.jit.onednn_fusion_enabled()
    try:
        torch.jit.enable_onednn_fusion(False)
        runner = fast._script(net, x)
        assert isinstance(runner, fast.FusedChunks)
        runner.build(x)
        assert runner.graphs and torch.jit.onednn_fusion_enabled() is False
        # switched on by the process itself: the frozen trace, for torch to fuse (an
        # optimize_for_inference graph would fail inside oneDNN Graph)
        torch.jit.enable_onednn_fusion(True)
        traced = fast._script(_net(1), x)
        assert not isinstance(traced, fast.FusedChunks)
        with torch.inference_mode():
            for _ in range(3):
                torch.testing.assert_close(traced(x), _net(1)(x), rtol=1e-5, atol=1e-6)
            # the fused chunks built before keep working with the switch on
            torch.testing.assert_close(runner(x), net(x), rtol=1e-5, atol=1e-6)
        assert torch.jit.onednn_fusion_enabled() is True
    finally:
        torch.jit.enable_onednn_fusion(old)


def test_a_fused_graph_that_disagrees_is_never_used(monkeypatch):
    net, other, x = _net(0), _net(1), torch.rand(40, 3, 12, 12)
    plain = _plain(net, x)
    real = fast._trace_frozen
    monkeypatch.setattr(fast, "_trace_frozen", lambda source, xb: real(other, xb))
    runner = fast.FusedChunks(net, plain)
    runner.build(x)
    assert set(runner.graphs) == set(fast.FUSED_ROWS)
    assert all(g is None for g in runner.graphs.values())
    with torch.inference_mode():
        torch.testing.assert_close(runner(x), net(x), rtol=1e-5, atol=1e-6)


def test_a_graph_that_cannot_be_built_falls_back_to_the_plain_one(monkeypatch):
    net, x = _net(), torch.rand(40, 3, 12, 12)
    plain = _plain(net, x)

    def broken(source, xb):
        raise RuntimeError("no oneDNN Graph here")

    monkeypatch.setattr(fast, "_trace_frozen", broken)
    runner = fast.FusedChunks(net, plain)
    runner.build(x)
    assert all(g is None for g in runner.graphs.values())
    with torch.inference_mode():
        torch.testing.assert_close(runner(x), net(x), rtol=1e-5, atol=1e-6)
    assert torch.jit.onednn_fusion_enabled() is False


def test_concurrent_calls_agree_with_the_model():
    net, x = _net(), torch.rand(77, 3, 12, 12)
    runner = _chunks(net, x[:3])  # built from fewer rows than a chunk: rows repeated
    assert all(runner.graphs[rows] is not None for rows in fast.FUSED_ROWS)
    outs: list = [None] * 4
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        barrier.wait()
        with torch.inference_mode():
            for _ in range(3):
                outs[i] = runner(x).numpy()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for out in outs:
        np.testing.assert_array_equal(out, outs[0])
    with torch.inference_mode():
        np.testing.assert_allclose(outs[0], net(x).numpy(), rtol=1e-5, atol=1e-6)


def test_the_fast_path_uses_fused_chunks_for_an_opted_in_model(monkeypatch):
    """``optimize=True`` scripts the model at the first batch: float32 gets the fused chunks,
    and the switch off (``ONEDNN_FUSION = False``) gives the plain graph."""
    monkeypatch.setattr(fast, "ONEDNN_FUSION", True)
    net, x = _net(), torch.rand(48, 3, 12, 12)
    with torch.inference_mode():
        runner = fast.frozen(net, x, optimize=True)
    assert isinstance(runner, fast.FusedChunks) and runner.rows == 0  # this batch: at its call
    monkeypatch.setattr(fast, "ONEDNN_FUSION", False)
    other = _net(2)
    with torch.inference_mode():
        scripted = fast.frozen(other, x, optimize=True)
    assert isinstance(scripted, torch.jit.ScriptModule)


def test_an_empty_first_batch_does_not_turn_the_script_off():
    net = _net(3)
    empty, x = torch.rand(0, 3, 12, 12), torch.rand(40, 3, 12, 12)
    with torch.inference_mode():
        assert fast.frozen(net, empty, optimize=True)(empty).shape == (0, 5)
        assert isinstance(fast.frozen(net, x, optimize=True), fast.FusedChunks)


def test_a_fork_does_not_inherit_a_compile_in_progress():
    """The child of a fork made while a chunk graph compiles gets the switch off and the lock
    free (the fork waits for the compile)."""
    import os

    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    net, x = _net(), torch.rand(40, 3, 12, 12)
    runner = fast.FusedChunks(net, _plain(net, x))
    started = threading.Event()
    real = fast._trace_frozen

    def slow(source, xb):
        started.set()
        import time

        time.sleep(0.5)  # the switch is on here
        return real(source, xb)

    fast._trace_frozen = slow
    try:
        builder = threading.Thread(target=runner.build, args=(x,))
        builder.start()
        assert started.wait(30)
        pid = os.fork()
        if pid == 0:  # the child: report and leave at once
            ok = (not torch.jit.onednn_fusion_enabled()) and fast._FUSION_LOCK.acquire(timeout=5)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        builder.join(timeout=60)
    finally:
        fast._trace_frozen = real
    assert os.WEXITSTATUS(status) == 0


def test_fused_graphs_wait_for_enough_rows():
    """Compiled once FUSE_AFTER_ROWS rows have run (counting those before), not for a few."""
    net, x = _net(), torch.rand(40, 3, 12, 12)
    runner = fast.FusedChunks(net, _plain(net, x), rows=fast.FUSE_AFTER_ROWS - 80)
    with torch.inference_mode():
        runner(x)
        assert runner.graphs is None and runner.rows == fast.FUSE_AFTER_ROWS - 40
        runner(x[:4])  # fewer rows than a chunk: counted, nothing compiled for them
        assert runner.graphs is None
        out = runner(x)
    assert runner.graphs is not None and all(g is not None for g in runner.graphs.values())
    torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-6)


def test_at_most_max_fused_models_per_process(monkeypatch):
    monkeypatch.setattr(fast, "MAX_FUSED_MODELS", 2)
    x = torch.rand(40, 3, 12, 12)
    runners = [_chunks(_net(i), x) for i in range(3)]
    assert [bool(r.graphs) for r in runners] == [True, True, False]
    assert fast._FUSED_MODELS == 2
    with torch.inference_mode():
        torch.testing.assert_close(runners[2](x), _net(2)(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value, expected", [("0", "False"), ("1", "True"), (None, "True")])
def test_the_environment_variable_switches_the_fusion(value, expected):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DISTILLDETECT_ONEDNN_FUSION"}
    if value is not None:
        env["DISTILLDETECT_ONEDNN_FUSION"] = value
    code = "from distilldetect.backends.torch import fast; print(fast.ONEDNN_FUSION)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == expected, out.stderr


def test_a_graph_that_onednn_graph_did_not_fuse_is_not_used(monkeypatch):
    """Where oneDNN Graph fuses nothing, the 'fused' graph is a bare frozen trace, slower than
    the optimize_for_inference graph: it is dropped."""
    net, x = _net(), torch.rand(40, 3, 12, 12)
    assert fast._was_fused() in (True, False)
    runner = fast.FusedChunks(net, _plain(net, x))
    monkeypatch.setattr(fast, "_was_fused", lambda: False)
    runner.build(x)
    assert runner.graphs and all(g is None for g in runner.graphs.values())
    assert fast._FUSED_MODELS == 0  # nothing kept, nothing counted
    with torch.inference_mode():
        torch.testing.assert_close(runner(x), net(x), rtol=1e-5, atol=1e-6)
