"""Reduced-precision inference copies: ``ModelDistillation(..., precision='bfloat16')``.

On CPUs with bfloat16 dot-product instructions (AVX512-BF16, AMX) oneDNN runs bfloat16
convolutions about twice as fast as float32 ones. :func:`lower` turns a private, eval-mode copy
of a model (a ``torch.fx.GraphModule``, as :func:`~distilldetect.backends.torch.fast.
traced_folded_copy` makes) into one that computes in bfloat16 and answers in float32:

- the input is cast to bfloat16 (4-D inputs in channels-last memory order, oneDNN's fast
  layout), parameters and buffers too (composed convolution kernels are built in float32
  first, then cast);
- when the output is a softmax (or log-softmax), its *input* is cast back to float32, so the
  probabilities themselves are computed in float32 from bfloat16 logits (a bfloat16 softmax
  would round every probability to 3 significant digits); any other output is cast to float32.

The zoo's models, which ``torch.fx`` cannot trace, compute their logits in bfloat16 and their
softmax in float32 (:class:`ZooLowered`); another module ``torch.fx`` cannot trace cannot be
lowered (:func:`lower` returns None: it runs in float32). Outputs differ from float32 ones by bfloat16's rounding (relative error
about 2^-8 per operation); this is an opt-in trade of exactness for speed.

Examples
--------
>>> import torch.fx
>>> net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=-1)).eval()
>>> low = lower(torch.fx.symbolic_trace(net))
>>> out = low(torch.rand(2, 4))
>>> out.dtype, bool(torch.allclose(out.sum(-1), torch.ones(2)))
(torch.float32, True)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from .compose import ComposedConvPair
from .layers import ImageModel

__all__ = ["DTYPES", "lower", "ZooLowered", "to_lower", "bf16_supported"]

#: torch dtype of each reduced precision of :data:`distilldetect.backends.PRECISIONS`.
DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16}

_SOFTMAX_FUNCTIONS = {
    torch.softmax,
    torch.log_softmax,
    torch.nn.functional.softmax,
    torch.nn.functional.log_softmax,
}


def bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 dot products (else bfloat16 is emulated: slower).

    Examples
    --------
    >>> isinstance(bf16_supported(), bool)
    True
    """
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # noqa: BLE001 - a build without oneDNN
        return False


def to_lower(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` cast to ``dtype``; floating 4-D inputs in channels-last order.

    Examples
    --------
    >>> to_lower(torch.zeros(1, 3, 2, 2), torch.bfloat16).is_contiguous(
    ...     memory_format=torch.channels_last)
    True
    """
    if not x.is_floating_point():
        return x
    if x.dim() == 4:
        return x.to(dtype, memory_format=torch.channels_last)
    return x.to(dtype)


def _to_float(x: Any) -> Any:
    return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _is_softmax(gm: fx.GraphModule, node: Any) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_function":
        return node.target in _SOFTMAX_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("softmax", "log_softmax")
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), (nn.Softmax, nn.LogSoftmax))
    return False


def _cast_outputs(gm: fx.GraphModule, output: fx.Node) -> None:
    graph = gm.graph

    def cast(node: Any) -> Any:
        if not isinstance(node, fx.Node):
            return node
        if _is_softmax(gm, node) and node.args and isinstance(node.args[0], fx.Node):
            logits = node.args[0]
            with graph.inserting_before(node):
                as_float = graph.call_function(_to_float, (logits,))
            node.replace_input_with(logits, as_float)
            return node
        with graph.inserting_before(output):
            return graph.call_function(_to_float, (node,))

    output.args = (fx.node.map_arg(output.args[0], cast),)


def _cast_inputs(gm: fx.GraphModule, dtype: torch.dtype) -> None:
    graph = gm.graph
    for ph in [n for n in graph.nodes if n.op == "placeholder"]:
        users = list(ph.users)
        with graph.inserting_after(ph):
            low = graph.call_function(to_lower, (ph, dtype))
        for user in users:
            user.replace_input_with(ph, low)


def _cast_module(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    for m in module.modules():
        if isinstance(m, ComposedConvPair):
            m.cast_kernels(dtype)  # built in float32 from float32 weights, then cast
    module = module.to(dtype)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.to(memory_format=torch.channels_last)


class ZooLowered(nn.Module):
    """A zoo model (``softmax(forward_logits(x))``, :class:`~distilldetect.backends.torch.layers.
    ImageModel`) computing its logits in ``dtype`` and its softmax in float32. The zoo's models
    check their input's rank in Python, which ``torch.fx`` cannot trace; their numpy-layout
    (NHWC) input is already in oneDNN's fast layout once viewed as NCHW.

    Examples
    --------
    >>> from distilldetect.backends.torch.models import mlp
    >>> low = ZooLowered(mlp((4,), 3, (8,)).eval(), torch.bfloat16)
    >>> low(torch.ones(2, 4)).dtype
    torch.float32
    """

    def __init__(self, module: ImageModel, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = _cast_module(module, dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.module.forward_logits(x.to(self.dtype) if x.is_floating_point() else x)
        return torch.softmax(logits.float(), dim=-1)


def lower(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module | None:
    """A copy of the eval-mode ``module`` computing in ``dtype``, answering in float32 (see the
    module docstring), or None when it cannot be lowered (not traceable by ``torch.fx``, not a
    zoo model). ``module`` itself is not changed.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    >>> _ = net(torch.rand(1, 3, 6, 6))
    >>> low = lower(net.eval())
    >>> low(torch.rand(2, 3, 6, 6)).dtype
    torch.float32
    """
    module = copy.deepcopy(module).eval()
    if isinstance(module, ImageModel) and type(module).forward is ImageModel.forward:
        return ZooLowered(module, dtype).eval()
    try:
        gm = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
    except Exception:  # noqa: BLE001 - not traceable: cannot be lowered
        return None
    output = next(n for n in gm.graph.nodes if n.op == "output")
    _cast_outputs(gm, output)
    _cast_inputs(gm, dtype)
    gm.graph.lint()
    gm.recompile()
    return _cast_module(gm, dtype).eval()
