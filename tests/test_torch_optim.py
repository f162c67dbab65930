"""The default torch optimizer (``backends/torch/optim.Adam``) against ``torch.optim.Adam``."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from distilldetect.backends.torch.optim import Adam  # noqa: E402


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4)
    )


@pytest.mark.parametrize("lr", [1e-3, 0.05])
def test_adam_matches_torch_adam_step_by_step(lr):
    ours, theirs = _net(0), _net(0)
    opt_ours = Adam(ours.parameters(), lr=lr)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        x = torch.rand(16, 3, 8, 8, generator=gen)
        for net, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            opt.step()
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(a, b)  # the same operations in the same order: bit for bit


def test_adam_skips_parameters_without_gradients_and_clears_gradients():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = Adam([a, b], lr=0.1)
    a.sum().backward()
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and not torch.equal(a.detach(), torch.ones(2))
    opt.zero_grad(set_to_none=False)
    assert torch.equal(a.grad, torch.zeros(2))
    opt.zero_grad()
    assert a.grad is None


def test_adam_refuses_empty_or_non_cpu_parameters():
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([])
    with pytest.raises(ValueError, match="CPU tensors"):
        Adam([torch.zeros(2, device="meta")])


def test_fit_with_the_default_optimizer_does_not_import_torch_dynamo():
    """The point of the default Adam and of the FLOP counter: a fit, optimised or not, leaves
    torch's compiler stack unimported (~70 MiB and ~0.8 s a process)."""
    code = (
        "import sys, numpy as np, torch\n"
        "from distilldetect import ModelDistillation\n"
        "t = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(),"
        " torch.nn.Linear(8 * 14 * 14, 4), torch.nn.Softmax(-1)).eval()\n"
        "for optimize in (False, True):\n"
        "    torch.manual_seed(0)\n"
        "    s = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),"
        " torch.nn.Linear(4 * 14 * 14, 4), torch.nn.Softmax(-1))\n"
        "    ad = ModelDistillation(distilled_model=s, model=t, optimize=optimize)\n"
        "    x = np.random.default_rng(0).random((300, 3, 16, 16), dtype=np.float32)\n"
        "    ad.fit(x, epochs=1, batch_size=128, verbose=False, seed=0).score(x)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
