"""``backends/torch/flops.FlopCounter`` against torch's own ``FlopCounterMode``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from distilldetect.backends.torch.flops import FlopCounter  # noqa: E402
from distilldetect.backends.torch.models import distilled_model_cifar10, resnet  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from user_models import UserResNet20, UserStudent  # noqa: E402


class Functional(nn.Module):
    """Work written with functions and operators, not modules."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.t = nn.Parameter(torch.randn(8, 4, 2, 2))
        self.m = nn.Parameter(torch.randn(8 * 7 * 7, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(x, self.w, padding=1, stride=2)  # 8 x 8 x 8
        up = F.conv_transpose2d(h, self.t, stride=2)  # 4 x 16 x 16
        h = h[:, :, :7, :7].flatten(1) @ self.m
        return (
            torch.addmm(torch.zeros(5), h, torch.eye(5))
            + torch.bmm(up.flatten(2), up.flatten(2).transpose(1, 2)).sum()
        )


CASES = [
    (resnet, (32, 32, 3)),
    (distilled_model_cifar10, (32, 32, 3)),
    (UserResNet20, (3, 32, 32)),
    (UserStudent, (3, 32, 32)),
    (Functional, (3, 16, 16)),
]


@pytest.mark.parametrize("build, shape", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_counts_what_torch_counts(build, shape):
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = build().eval()
    x = torch.rand(2, *shape)
    ours = FlopCounter()
    with torch.no_grad(), ours:
        net(x)
    theirs = FlopCounterMode(display=False)
    with torch.no_grad(), theirs:
        net(x)
    assert ours.total == theirs.get_total_flops() > 0


def test_work_inside_a_composite_call_is_not_seen():
    attention = nn.MultiheadAttention(16, 2, batch_first=True)
    q = torch.zeros(1, 5, 16)
    with torch.no_grad(), FlopCounter() as counter:
        attention(q, q, q)
    assert counter.total == 0  # flops_per_row then assumes the model is worth splitting
