"""The seed study's student (``distilled_model_cifar10``) and the speed trick that only it allows.

Its first convolution has no activation, so the first two convolutions compose into one
convolution of the input; :func:`composed_logits` computes the model's logits that way, exactly
(up to float rounding), for inference and training alike. The trick reads this model's
internals, so it lives beside the model; :mod:`.fast` uses it through :func:`composable`,
:class:`ComposedStudent` and :func:`composed_logits` only.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .layers import ImageModel, SameConv2d, _out_size, _parse_input_shape, _same_padding
from .modes import preserve_modes

__all__ = [
    "DistilledCifar10",
    "distilled_model_cifar10",
    "MIN_MACS_TO_COMPOSE",
    "composable",
    "composed_logits",
    "pair_kernels",
    "pair_plan",
    "ComposedStudent",
]

#: The first two convolutions are composed only when they cost at least this many multiply-adds
#: per image; below it the composition's fixed overhead dominates.
MIN_MACS_TO_COMPOSE: int = 5_000_000


# ---------------------------------------------------------------------- the seed's student
class DistilledCifar10(ImageModel):
    """The seed study's distilled model (see :func:`distilled_model_cifar10`)."""

    def __init__(
        self,
        input_shape: Sequence[int] = (32, 32, 3),
        num_classes: int = 10,
        nb_conv_layers: int = 3,
        nb_filters1: int = 256,
        nb_dense: int = 40,
        kernel1: int = 4,
        kernel2: int = 4,
        kernel3: int = 4,
        l1: float = 1e-5,
    ) -> None:
        kwargs = {
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "nb_conv_layers": nb_conv_layers,
            "nb_filters1": nb_filters1,
            "nb_dense": nb_dense,
            "kernel1": kernel1,
            "kernel2": kernel2,
            "kernel3": kernel3,
            "l1": l1,
        }
        super().__init__(input_shape, "distilled_model_cifar10", kwargs)
        if nb_conv_layers not in (1, 2, 3):
            raise ValueError(f"nb_conv_layers must be 1, 2 or 3, got {nb_conv_layers}")
        h, w, c = _parse_input_shape(input_shape)
        filters = [int(nb_filters1), int(nb_filters1 / 2), int(nb_filters1 / 4)][:nb_conv_layers]
        kernels = [kernel1, kernel2, kernel3][:nb_conv_layers]
        convs: list[SameConv2d] = []
        cin = c
        for f, k in zip(filters, kernels, strict=True):
            convs.append(SameConv2d(cin, f, k, stride=2))
            cin = f
        self.convs = nn.ModuleList(convs)
        flat = _out_size(h, [2] * nb_conv_layers) * _out_size(w, [2] * nb_conv_layers) * cin
        self.dense = nn.Linear(flat, nb_dense)
        self.out = nn.Linear(nb_dense, num_classes)
        self.l1 = float(l1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i > 0:  # the first convolution is linear in the seed's model
                x = F.relu(x)
        # Flatten in NHWC order, as Keras' Flatten does on channels-last tensors.
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.out(self.dense(x))

    def regularization_loss(self) -> torch.Tensor:
        """L1 penalty ``l1 * sum|W|`` on the kernels of the 2nd and 3rd convolutions (the seed's)."""
        total = torch.zeros((), dtype=self.out.weight.dtype)
        for conv in list(self.convs)[1:]:
            total = total + conv.weight.abs().sum()
        return self.l1 * total


def _from_classifier(clf: nn.Module) -> tuple[tuple[int, ...], int]:
    """Input shape and class count of a torch classifier (the seed passes ``clf`` first)."""
    shape = getattr(clf, "input_shape", None)
    if shape is None:
        raise ValueError(
            "distilled_model_cifar10(clf) needs a classifier with an input_shape attribute (zoo "
            "models have one); otherwise pass input_shape=(h, w, c) and num_classes="
        )
    with preserve_modes(clf, training=False), torch.no_grad():
        num_classes = int(clf(torch.zeros(1, *shape)).shape[-1])
    return tuple(int(v) for v in shape), num_classes


def distilled_model_cifar10(
    input_shape: Sequence[int] | nn.Module = (32, 32, 3),
    num_classes: int = 10,
    nb_conv_layers: int = 3,
    nb_filters1: int = 256,
    nb_dense: int = 40,
    kernel1: int = 4,
    kernel2: int = 4,
    kernel3: int = 4,
    l1: float = 1e-5,
) -> DistilledCifar10:
    """The seed study's student: Conv(nb_filters1, k1, s2) → Conv(/2, k2, s2, relu) → Conv(/4, k3, s2, relu)
    → Flatten → Dense(nb_dense) → Dense(num_classes, softmax), 'same' padding, L1(1e-5) on conv 2-3.

    About 0.71 M parameters with the defaults on 32x32x3. As in the seed, the first argument
    may be the classifier itself (``distilled_model_cifar10(clf)``): its input shape and
    number of classes are then used.

    Examples
    --------
    >>> m = distilled_model_cifar10()
    >>> m(torch.zeros(2, 32, 32, 3)).shape
    torch.Size([2, 10])
    """
    if isinstance(input_shape, nn.Module):
        input_shape, num_classes = _from_classifier(input_shape)
    return DistilledCifar10(
        input_shape,
        num_classes,
        nb_conv_layers,
        nb_filters1,
        nb_dense,
        kernel1,
        kernel2,
        kernel3,
        l1,
    )


# ------------------------------------------------- the seed's student: two linear-adjacent convs
# In the zoo's DistilledCifar10 the first convolution has no activation, so the first two
# convolutions compose into ONE convolution (kernel s1*(k2-1)+k1, stride s1*s2) on the input:
# 32x32x3 -> 8x8x128 costs 2.5 M multiply-adds per image instead of 36.6 M. Composition is
# exact except at the border, where the second convolution's 'same' zero padding sits on the
# first one's output grid: the composed map sees there the first convolution evaluated on the
# padded input instead of zeros. Those "ring" terms are subtracted, each again as a small
# composed convolution of a strip of the input (corners, subtracted twice, are added back).
# Gradients flow through the composed kernels to the original parameters (autograd), so the
# same code serves training.


class _PairPlan:
    """Geometry of conv1 -> conv2 for one input size (None from :func:`_pair_plan` if unsupported)."""

    __slots__ = (
        "s1",
        "k1",
        "t1",
        "l1",
        "s2",
        "k2",
        "t2",
        "l2",
        "h1",
        "w1",
        "h2",
        "w2",
        "pad",
        "rows",
        "cols",
    )

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


def pair_plan(model: nn.Module, h: int, w: int) -> _PairPlan | None:
    if len(model.convs) < 2:
        return None
    c1, c2 = model.convs[0], model.convs[1]
    for c in (c1, c2):
        if (
            c.kernel_size[0] != c.kernel_size[1]
            or c.stride[0] != c.stride[1]
            or c.dilation != (1, 1)
            or c.groups != 1
            or c.padding_mode != "zeros"
            or c.padding != (0, 0)
            or c.bias is None
        ):
            return None
    k1, s1, k2, s2 = c1.kernel_size[0], c1.stride[0], c2.kernel_size[0], c2.stride[0]
    t1, b1 = _same_padding(h, k1, s1)
    l1, r1 = _same_padding(w, k1, s1)
    h1, w1 = -(-h // s1), -(-w // s1)
    t2, b2 = _same_padding(h1, k2, s2)
    l2, r2 = _same_padding(w1, k2, s2)
    if max(t2, b2, l2, r2) > 1:  # one ring row/column per side at most
        return None
    h2, w2 = -(-h1 // s2), -(-w1 // s2)
    size, stride = s1 * (k2 - 1) + k1, s1 * s2
    top, left = s1 * t2 + t1, s1 * l2 + l1
    bottom = stride * (h2 - 1) + size - h - top
    right = stride * (w2 - 1) + size - w - left

    def taps(ring: int, n_out: int, pad: int) -> list[tuple[int, int]]:
        # (output index, kernel tap) pairs of conv2 that read ring position `ring`
        return [(j, ring + pad - s2 * j) for j in range(n_out) if 0 <= ring + pad - s2 * j < k2]

    rows = [(r, taps(r, h2, t2)) for r, on in ((-1, t2), (h1, b2)) if on]
    cols = [(c, taps(c, w2, l2)) for c, on in ((-1, l2), (w1, r2)) if on]
    return _PairPlan(
        s1=s1,
        k1=k1,
        t1=t1,
        l1=l1,
        s2=s2,
        k2=k2,
        t2=t2,
        l2=l2,
        h1=h1,
        w1=w1,
        h2=h2,
        w2=w2,
        pad=(left, right, top, bottom),
        rows=rows,
        cols=cols,
    )


def _placement(k1: int, k2: int, s1: int, like: torch.Tensor) -> torch.Tensor:
    """0/1 matrix ``(k2, k1, s1*(k2-1)+k1)``: tap ``c`` of conv2 and ``a`` of conv1 land at ``s1*c+a``."""
    size = s1 * (k2 - 1) + k1
    e = torch.zeros(k2, k1, size, dtype=like.dtype, device=like.device)
    for c in range(k2):
        for a in range(k1):
            e[c, a, s1 * c + a] = 1.0
    return e


def pair_kernels(model: nn.Module) -> dict[str, torch.Tensor]:
    """Composed kernels and biases of conv1 -> conv2 (differentiable in the parameters).

    ``t[o2, i, c, a, d, b] = sum_o1 w2[o2, o1, c, d] * w1[o1, i, a, b]`` holds every product of
    taps once; the composed kernels place tap pairs ``(c, a)`` at ``s1*c + a`` along each axis:
    all of them (``k``), or only conv2's tap row / column ``t`` (``row{t}`` / ``col{t}``, for the
    border strips).
    """
    c1, c2 = model.convs[0], model.convs[1]
    w1, b1, w2, b2 = c1.weight, c1.bias, c2.weight, c2.bias
    s1, k1, k2 = c1.stride[0], c1.kernel_size[0], c2.kernel_size[0]
    o2, cin = w2.shape[0], w1.shape[1]
    t = (w2.reshape(o2, -1, k2 * k2).transpose(1, 2) @ w1.reshape(w1.shape[0], -1)).reshape(
        o2, k2, k2, cin, k1, k1
    )  # (o2, c, d, i, a, b)
    e = _placement(k1, k2, s1, w1)
    out = {
        "k": torch.einsum("pcdiab,cau,dbv->piuv", t, e, e),
        "b": b2 + w2.sum((2, 3)) @ b1,
        "w1": w1,
        "b1": b1,
        "w2": w2,
    }
    rows = torch.einsum("pcdiab,dbv->cpiav", t, e)  # conv2 tap row c: (k2, o2, i, k1, K)
    cols = torch.einsum("pcdiab,cau->dpiub", t, e)  # conv2 tap column d: (k2, o2, i, K, k1)
    out["w2t"] = w2.permute(2, 3, 1, 0).contiguous()  # (c, d, o1, o2): corner products
    row_b = w2.sum(3).permute(2, 0, 1) @ b1  # (k2, o2)
    col_b = w2.sum(2).permute(2, 0, 1) @ b1
    for tap in range(k2):
        out[f"row{tap}"] = rows[tap]
        out[f"rowb{tap}"] = row_b[tap]
        out[f"col{tap}"] = cols[tap]
        out[f"colb{tap}"] = col_b[tap]
    return out


def _pair_forward(x: torch.Tensor, plan: _PairPlan, kern: dict[str, torch.Tensor]) -> torch.Tensor:
    """conv2(conv1(x)) before conv2's activation, for NCHW ``x``, via the composed kernels."""
    s1, k1 = plan.s1, plan.k1
    stride = s1 * plan.s2
    xp = F.pad(x, plan.pad)
    y = F.conv2d(xp, kern["k"], kern["b"], stride=stride)

    def r0(r: int) -> int:  # first padded-input row read by conv1's (extended) output row r
        return s1 * (r + plan.t2)

    def c0(c: int) -> int:
        return s1 * (c + plan.l2)

    # Corrections are assembled with cat (whose backward only slices), not written into y in
    # place: an in-place write into a slice costs a full-size copy in the backward pass.
    row_fix: dict[int, torch.Tensor] = {}
    for r, pairs in plan.rows:
        strip = xp[:, :, r0(r) : r0(r) + k1, :]
        for j, t in pairs:
            fix = F.conv2d(strip, kern[f"row{t}"], kern[f"rowb{t}"], stride=(1, stride))
            row_fix[j] = fix if j not in row_fix else row_fix[j] + fix
    col_fix: dict[int, torch.Tensor] = {}
    for c, pairs in plan.cols:
        strip = xp[:, :, :, c0(c) : c0(c) + k1]
        for j, t in pairs:
            fix = F.conv2d(strip, kern[f"col{t}"], kern[f"colb{t}"], stride=(stride, 1))
            col_fix[j] = fix if j not in col_fix else col_fix[j] + fix
    # corners were subtracted by both a row strip and a column strip: add them back once
    for r, row_pairs in plan.rows:
        for c, col_pairs in plan.cols:
            corner = F.conv2d(
                xp[:, :, r0(r) : r0(r) + k1, c0(c) : c0(c) + k1], kern["w1"], kern["b1"]
            )[:, :, 0, 0]
            for j, tr in row_pairs:
                back = {i: (corner @ kern["w2t"][tr, tc])[:, :, None, None] for i, tc in col_pairs}
                row_fix[j] = row_fix[j] - _assemble(back, plan.w2, 3, row_fix[j].shape)
    if not torch.is_grad_enabled():  # inference: no backward to pay for, write in place
        for j, fix in row_fix.items():
            y[:, :, j : j + 1, :] -= fix
        for j, fix in col_fix.items():
            y[:, :, :, j : j + 1] -= fix
        return y
    if row_fix:
        y = y - _assemble(row_fix, plan.h2, 2, y.shape)
    if col_fix:
        y = y - _assemble(col_fix, plan.w2, 3, y.shape)
    return y


def _assemble(pieces: dict[int, torch.Tensor], n: int, dim: int, shape: torch.Size) -> torch.Tensor:
    """A tensor of ``shape`` holding ``pieces[i]`` at index ``i`` along ``dim``, zeros elsewhere."""
    ref = next(iter(pieces.values()))
    parts, gap = [], 0
    for i in range(n):
        if i in pieces:
            if gap:
                size = list(shape)
                size[dim] = gap
                parts.append(ref.new_zeros(size))
                gap = 0
            parts.append(pieces[i])
        else:
            gap += 1
    if gap:
        size = list(shape)
        size[dim] = gap
        parts.append(ref.new_zeros(size))
    return torch.cat(parts, dim=dim)


def composable(model: nn.Module) -> bool:
    """Whether ``model`` is the zoo's DistilledCifar10 (exact type) with two or more convolutions.

    Examples
    --------
    >>> from distilldetect.backends.torch.models import distilled_model_cifar10
    >>> composable(distilled_model_cifar10())
    True
    """
    if type(model) is not DistilledCifar10 or len(model.convs) < 2:
        return False
    return _pair_macs(model) >= MIN_MACS_TO_COMPOSE


def _pair_macs(model: nn.Module) -> int:
    """Multiply-adds per image of the model's first two convolutions, at its input shape."""
    h, w = int(model.input_shape[0]), int(model.input_shape[1])
    c1, c2 = model.convs[0], model.convs[1]
    h1, w1 = -(-h // c1.stride[0]), -(-w // c1.stride[1])
    h2, w2 = -(-h1 // c2.stride[0]), -(-w1 // c2.stride[1])
    return (
        h1 * w1 * c1.weight[0].numel() * c1.out_channels
        + h2 * w2 * c2.weight[0].numel() * c2.out_channels
    )


def composed_logits(
    model: nn.Module, x: torch.Tensor, kern: dict[str, torch.Tensor] | None = None
) -> torch.Tensor | None:
    """DistilledCifar10's logits with its first two convolutions composed, or None if the
    input's size is not supported (the caller then runs the model as it is).

    ``kern`` are :func:`pair_kernels` of the model (computed here when None); pass detached
    ones for inference or leaves to differentiate against.

    Examples
    --------
    >>> from distilldetect.backends.torch.models import distilled_model_cifar10
    >>> m = distilled_model_cifar10()
    >>> x = torch.rand(4, 32, 32, 3)
    >>> with torch.no_grad():
    ...     bool((composed_logits(m, x) - m.forward_logits(x)).abs().max() < 1e-4)
    True
    """
    if x.dim() == 3:
        x = x.unsqueeze(-1)
    if x.dim() != 4:
        return None
    x = x.permute(0, 3, 1, 2)
    plan = pair_plan(model, x.shape[-2], x.shape[-1])
    if plan is None or x.shape[1] != model.convs[0].in_channels:
        return None
    h = _pair_forward(x, plan, pair_kernels(model) if kern is None else kern)
    # in place where no backward needs the pre-activation (the tensors are fresh here)
    relu = F.relu_ if not torch.is_grad_enabled() else F.relu
    h = relu(h)
    for conv in list(model.convs)[2:]:
        h = relu(conv(h))
    h = h.permute(0, 2, 3, 1).flatten(1)  # NHWC order, as the model flattens
    if h.shape[1] != model.dense.in_features:
        return None
    return model.out(model.dense(h))


class ComposedStudent(nn.Module):
    """Eval-time stand-in for a DistilledCifar10: a private copy plus its composed kernels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.kern = pair_kernels(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = composed_logits(self.model, x, self.kern)
        if logits is None:
            return self.model(x)
        return torch.softmax(logits, dim=-1)
