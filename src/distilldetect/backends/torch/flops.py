"""Counting a torch model's floating-point operations, without torch's compiler stack.

The fast paths decide whether a batch is worth splitting over worker threads by the work it
carries (:func:`~distilldetect.backends.torch.fast.flops_per_row`). torch's own counter,
``torch.utils.flop_counter.FlopCounterMode``, is a ``TorchDispatchMode``: entering any dispatch
mode imports ``torch._dynamo`` (with sympy, about 800 modules, ~70 MiB of resident memory and
~0.8 s on the first call in a process). :class:`FlopCounter` is a ``TorchFunctionMode``
instead: it sees the Python-level calls (``F.conv2d``, ``F.linear``, ``@`` ...) that carry
nearly all of a classifier's work, and counts them with the same convention as torch's
counter (two operations per multiply-add).

Examples
--------
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
>>> with torch.no_grad(), FlopCounter() as counter:
...     _ = net(torch.zeros(1, 3, 8, 8))
>>> counter.total == 2 * (4 * 6 * 6) * (3 * 3 * 3) + 2 * 2 * (4 * 6 * 6)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["FlopCounter"]


def _conv(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, *_: Any) -> int:
    # weight (C_out, C_in / groups, *kernel): each output element is one dot product
    return 2 * out.numel() * math.prod(weight.shape[1:])


def _conv_transpose(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, *_: Any) -> int:
    # weight (C_in, C_out / groups, *kernel): each input element scatters into that many outputs
    return 2 * x.numel() * math.prod(weight.shape[1:])


def _inner(out: torch.Tensor, a: torch.Tensor, *_: Any) -> int:
    # a product over a's last dimension for every output element (mm, bmm, matmul, linear)
    return 2 * out.numel() * (a.shape[-1] if a.dim() else 1)


def _linear(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, *_: Any) -> int:
    return 2 * out.numel() * weight.shape[-1]


def _addmm(out: torch.Tensor, _bias: torch.Tensor, a: torch.Tensor, *_: Any) -> int:
    return _inner(out, a)


def _attention(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, *_: Any) -> int:
    # softmax(q k^T) v: two products of (L x d) by (d x S)
    return 4 * math.prod(q.shape[:-1]) * k.shape[-2] * q.shape[-1]


_COUNTS: dict[Callable, Callable[..., int]] = {
    F.conv1d: _conv,
    F.conv2d: _conv,
    F.conv3d: _conv,
    F.conv_transpose1d: _conv_transpose,
    F.conv_transpose2d: _conv_transpose,
    F.conv_transpose3d: _conv_transpose,
    F.linear: _linear,
    torch.mm: _inner,
    torch.bmm: _inner,
    torch.matmul: _inner,
    torch.Tensor.mm: _inner,
    torch.Tensor.bmm: _inner,
    torch.Tensor.matmul: _inner,
    torch.Tensor.__matmul__: _inner,
    torch.addmm: _addmm,
    torch.baddbmm: _addmm,
    torch.Tensor.addmm: _addmm,
    torch.Tensor.baddbmm: _addmm,
    F.scaled_dot_product_attention: _attention,
}


class FlopCounter(TorchFunctionMode):
    """Adds up the operations of the convolutions, matrix products and attention run inside it.

    Other functions (activations, normalisation, pooling) are not counted: on a classifier they
    are a few percent of the work. The mode is off while a call it intercepts runs, so a counted
    function's own calls are not counted twice, and the work inside a composite function that
    is intercepted whole (``F.multi_head_attention_forward``) is not seen.

    Examples
    --------
    >>> with FlopCounter() as counter:
    ...     _ = torch.ones(2, 3) @ torch.ones(3, 4)
    >>> counter.total
    48
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_function__(
        self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        count = _COUNTS.get(func)
        if count is not None and isinstance(out, torch.Tensor):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            tensors += [v for v in (kwargs or {}).values() if isinstance(v, torch.Tensor)]
            try:
                self.total += int(count(out, *tensors))
            except (IndexError, TypeError):  # an unusual signature: leave it out
                pass
        return out
