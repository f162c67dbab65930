"""Two convolutions with nothing between them are one convolution: compose them, exactly.

When a convolution's output feeds only another convolution (no activation between, as in the
seed study's student, whose first convolution is linear), ``conv2(conv1(x))`` equals ONE
convolution of ``x`` with kernel ``s1*(k2-1)+k1`` and stride ``s1*s2`` — except at the border,
where conv2's zero padding sits on conv1's output grid: the composed map sees there conv1
evaluated on the padded input instead of zeros. Those "ring" terms are subtracted, each again
as a small composed convolution of a strip of the input (corners, subtracted twice, are added
back). On the seed's student (32x32x3 -> 8x8x128) this costs 2.5 M multiply-adds per image
instead of 36.6 M. Gradients flow through the composed kernels to the original parameters
(autograd), so the same code serves training.

Two users:

- the zoo's student (:mod:`.seed_student`), whose convolutions pad like TensorFlow's ``'same'``;
- any model the caller opts in with ``optimize=True``: :func:`compose_conv_pairs` finds
  ``nn.Conv2d -> nn.Conv2d`` edges in the model's traced graph (``torch.fx``) and returns a
  module sharing the model's parameters with each such pair replaced by a
  :class:`ComposedConvPair`. Nothing here knows any particular model.

Examples
--------
>>> net = nn.Sequential(nn.Conv2d(3, 64, 4, 2, 1), nn.Conv2d(64, 32, 4, 2, 1), nn.ReLU())
>>> fast, n = compose_conv_pairs(net)
>>> n
1
>>> x = torch.rand(2, 3, 32, 32)
>>> bool((fast(x) - net(x)).abs().max() < 1e-4)
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "PairPlan",
    "pair_plan",
    "pair_kernels",
    "pair_forward",
    "pair_macs",
    "ComposedConvPair",
    "compose_conv_pairs",
    "MIN_MACS_TO_COMPOSE",
]

#: A pair is composed only when it costs at least this many multiply-adds per image; below it
#: the composition's fixed overhead (kernels, border strips) dominates.
MIN_MACS_TO_COMPOSE: int = 5_000_000


class PairPlan:
    """Geometry of conv1 -> conv2 for one input size (see :func:`pair_plan`)."""

    __slots__ = ("s1", "k1", "t2", "l2", "s2", "h2", "w2", "pad", "rows", "cols")

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


def _axis(
    n: int, k1: int, s1: int, pad1: tuple[int, int], k2: int, s2: int, pad2: tuple[int, int]
) -> tuple[int, int, list[int], int, int] | None:
    """One spatial axis: ``(n1, n2, ring positions, composed pad before, composed pad after)``,
    or None when conv2 reads more than one ring position on a side."""
    n1 = (n + pad1[0] + pad1[1] - k1) // s1 + 1
    n2 = (n1 + pad2[0] + pad2[1] - k2) // s2 + 1
    if n1 < 1 or n2 < 1 or pad2[0] > 1:
        return None
    after = (n2 - 1) * s2 - pad2[0] + k2 - n1  # conv1 rows past the end that conv2 reads
    if after > 1:
        return None
    size, stride = s1 * (k2 - 1) + k1, s1 * s2
    before_c = s1 * pad2[0] + pad1[0]
    after_c = stride * (n2 - 1) + size - n - before_c
    ring = ([-1] if pad2[0] == 1 else []) + ([n1] if after == 1 else [])
    return n1, n2, ring, before_c, after_c


def _square(c: nn.Conv2d) -> bool:
    return (
        c.kernel_size[0] == c.kernel_size[1]
        and c.stride[0] == c.stride[1]
        and tuple(c.dilation) == (1, 1)
        and c.groups == 1
        and c.padding_mode == "zeros"
    )


def pair_plan(
    c1: nn.Conv2d,
    c2: nn.Conv2d,
    h: int,
    w: int,
    pads1: tuple[int, int, int, int],
    pads2: tuple[int, int, int, int],
) -> PairPlan | None:
    """Geometry of ``c2(pad2(c1(pad1(x))))`` for ``h x w`` inputs, or None if unsupported.

    ``pads1`` / ``pads2`` are the zero paddings ``(top, bottom, left, right)`` each convolution
    applies (the convolutions' own ``padding`` attribute is ignored: the caller says what the
    forward does). Supported: square kernels and strides, no dilation or groups, zero padding,
    and at most one padded row/column of conv1's output read by conv2 on each side.

    Examples
    --------
    >>> c1, c2 = nn.Conv2d(3, 8, 4, 2), nn.Conv2d(8, 4, 4, 2)
    >>> pair_plan(c1, c2, 32, 32, (1, 1, 1, 1), (1, 1, 1, 1)).pad
    (3, 3, 3, 3)
    """
    if not (_square(c1) and _square(c2)) or c1.out_channels != c2.in_channels:
        return None
    k1, s1, k2, s2 = c1.kernel_size[0], c1.stride[0], c2.kernel_size[0], c2.stride[0]
    rows = _axis(h, k1, s1, pads1[:2], k2, s2, pads2[:2])
    cols = _axis(w, k1, s1, pads1[2:], k2, s2, pads2[2:])
    if rows is None or cols is None:
        return None
    t2, l2 = pads2[0], pads2[2]

    def taps(ring: int, n_out: int, pad: int) -> list[tuple[int, int]]:
        # (output index, kernel tap) pairs of conv2 that read ring position `ring`
        return [(j, ring + pad - s2 * j) for j in range(n_out) if 0 <= ring + pad - s2 * j < k2]

    return PairPlan(
        s1=s1,
        k1=k1,
        t2=t2,
        l2=l2,
        s2=s2,
        h2=rows[1],
        w2=cols[1],
        pad=(cols[3], cols[4], rows[3], rows[4]),
        rows=[(r, taps(r, rows[1], t2)) for r in rows[2]],
        cols=[(c, taps(c, cols[1], l2)) for c in cols[2]],
    )


def _placement(k1: int, k2: int, s1: int, like: torch.Tensor) -> torch.Tensor:
    """0/1 matrix ``(k2, k1, s1*(k2-1)+k1)``: tap ``c`` of conv2 and ``a`` of conv1 land at ``s1*c+a``."""
    size = s1 * (k2 - 1) + k1
    e = torch.zeros(k2, k1, size, dtype=like.dtype, device=like.device)
    for c in range(k2):
        for a in range(k1):
            e[c, a, s1 * c + a] = 1.0
    return e


def pair_kernels(c1: nn.Conv2d, c2: nn.Conv2d) -> dict[str, torch.Tensor]:
    """Composed kernels and biases of ``c1 -> c2`` (differentiable in the parameters).

    ``t[o2, i, c, a, d, b] = sum_o1 w2[o2, o1, c, d] * w1[o1, i, a, b]`` holds every product of
    taps once; the composed kernels place tap pairs ``(c, a)`` at ``s1*c + a`` along each axis:
    all of them (``k``), or only conv2's tap row / column ``t`` (``row{t}`` / ``col{t}``, for the
    border strips). A missing bias counts as zeros.

    Examples
    --------
    >>> pair_kernels(nn.Conv2d(3, 8, 4, 2), nn.Conv2d(8, 4, 4, 2))["k"].shape
    torch.Size([4, 3, 10, 10])
    """
    w1, w2 = c1.weight, c2.weight
    b1 = c1.bias if c1.bias is not None else w1.new_zeros(w1.shape[0])
    b2 = c2.bias if c2.bias is not None else w2.new_zeros(w2.shape[0])
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
    # conv2's tap (c, d) as an (o1, o2) matrix, for the corner products: views of one copy
    # (unbind's backward stacks the taps' gradients once; indexing a (c, d, o1, o2) tensor per
    # corner would allocate and zero-fill a full-size gradient for every corner)
    taps = w2.permute(2, 3, 1, 0).reshape(k2 * k2, w2.shape[1], o2).unbind(0)
    for c in range(k2):
        for d in range(k2):
            out[f"w2t{c}_{d}"] = taps[c * k2 + d]
    row_b = w2.sum(3).permute(2, 0, 1) @ b1  # (k2, o2)
    col_b = w2.sum(2).permute(2, 0, 1) @ b1
    for tap in range(k2):
        out[f"row{tap}"] = rows[tap]
        out[f"rowb{tap}"] = row_b[tap]
        out[f"col{tap}"] = cols[tap]
        out[f"colb{tap}"] = col_b[tap]
    return out


def pair_forward(x: torch.Tensor, plan: PairPlan, kern: dict[str, torch.Tensor]) -> torch.Tensor:
    """``conv2(conv1(x))`` for NCHW ``x`` via the composed kernels (before any activation)."""
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
                back = {
                    i: (corner @ kern[f"w2t{tr}_{tc}"])[:, :, None, None] for i, tc in col_pairs
                }
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


def pair_macs(c1: nn.Conv2d, c2: nn.Conv2d, h1: int, w1: int, h2: int, w2: int) -> int:
    """Multiply-adds per image of ``c1`` (output ``h1 x w1``) then ``c2`` (output ``h2 x w2``).

    Examples
    --------
    >>> pair_macs(nn.Conv2d(3, 256, 4), nn.Conv2d(256, 128, 4), 16, 16, 8, 8)
    36700160
    """
    return h1 * w1 * c1.weight[0].numel() * c1.out_channels + (
        h2 * w2 * c2.weight[0].numel() * c2.out_channels
    )


# ------------------------------------------------------------- any model: the traced graph
def _fixed_pads(c: nn.Conv2d) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` zero padding of a plain ``nn.Conv2d``, or None."""
    if isinstance(c.padding, str):
        return (0, 0, 0, 0) if c.padding == "valid" else None
    ph, pw = (int(p) for p in c.padding)
    return ph, ph, pw, pw


class ComposedConvPair(nn.Module):
    """``c2(c1(x))`` computed as one composed convolution (see the module's docstring).

    Holds the two convolutions themselves (their parameters, not copies): in training the
    kernels are rebuilt from the parameters at every call, so gradients reach them. With
    ``frozen=True`` (a private inference copy whose weights never change) the kernels are
    built once. Inputs whose size the composition does not support, or where it would not
    save work (:data:`MIN_MACS_TO_COMPOSE`), run ``c2(c1(x))`` as it is.

    Examples
    --------
    >>> pair = ComposedConvPair(nn.Conv2d(3, 64, 4, 2, 1), nn.Conv2d(64, 32, 4, 2, 1))
    >>> x = torch.rand(2, 3, 32, 32)
    >>> bool((pair(x) - pair.c2(pair.c1(x))).abs().max() < 1e-4)
    True
    """

    def __init__(self, c1: nn.Conv2d, c2: nn.Conv2d, frozen: bool = False) -> None:
        super().__init__()
        self.c1, self.c2 = c1, c2
        self.frozen = frozen
        self._plans: dict[tuple[int, int], PairPlan | None] = {}
        self._kern: dict[str, torch.Tensor] | None = None

    def plan(self, h: int, w: int) -> PairPlan | None:
        """The pair's geometry for ``h x w`` inputs (None: run the two convolutions)."""
        key = (h, w)
        if key not in self._plans:
            p1, p2 = _fixed_pads(self.c1), _fixed_pads(self.c2)
            plan = None if p1 is None or p2 is None else pair_plan(self.c1, self.c2, h, w, p1, p2)
            if plan is not None:
                k, s = self.c1.kernel_size[0], self.c1.stride[0]
                h1, w1 = (h + p1[0] + p1[1] - k) // s + 1, (w + p1[2] + p1[3] - k) // s + 1
                if pair_macs(self.c1, self.c2, h1, w1, plan.h2, plan.w2) < MIN_MACS_TO_COMPOSE:
                    plan = None
            self._plans[key] = plan
        return self._plans[key]

    def kernels(self) -> dict[str, torch.Tensor]:
        """The composed kernels: cached when frozen, else rebuilt (differentiably) per call."""
        if not self.frozen:
            return pair_kernels(self.c1, self.c2)
        if self._kern is None:
            with torch.no_grad():
                self._kern = pair_kernels(self.c1, self.c2)
        return self._kern

    def cast_kernels(self, dtype: torch.dtype) -> None:
        """Build the frozen kernels now (from the current weights' precision) and cast them to
        ``dtype``: a reduced-precision copy composes in float32 before it rounds."""
        if not self.frozen:
            raise ValueError("cast_kernels needs a frozen pair (a private inference copy)")
        self._kern = {k: v.to(dtype) for k, v in self.kernels().items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.plan(x.shape[-2], x.shape[-1]) if x.dim() == 4 else None
        if plan is None or x.shape[1] != self.c1.in_channels:
            return self.c2(self.c1(x))
        return pair_forward(x, plan, self.kernels())


def _pads_known(c: nn.Module) -> bool:
    return type(c) is nn.Conv2d and _square(c) and _fixed_pads(c) is not None


def compose_conv_pairs(model: nn.Module, frozen: bool = False) -> tuple[nn.Module, int]:
    """``model`` with every ``nn.Conv2d -> nn.Conv2d`` edge of its traced graph composed.

    The model is traced with ``torch.fx`` in its current mode (Python branches on
    ``self.training`` are fixed as they are now). An edge is composed when the first
    convolution's output is used by the second one only, as its input. The result is a
    ``torch.fx.GraphModule`` sharing the model's parameters (``frozen=False``: gradients reach
    them), or ``model`` itself when there is nothing to compose or the forward cannot be
    traced. Returns ``(module, number of pairs composed)``.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 64, 4, 2, 1), nn.ReLU(), nn.Conv2d(64, 8, 3))
    >>> compose_conv_pairs(net)[1]  # a ReLU between them: nothing to compose
    0
    """
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - not traceable (data-dependent control flow...): as it is
        return model, 0
    mods = dict(gm.named_modules())
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _pads_known(mods.get(node.target)):
            continue
        users = list(node.users)
        if len(users) != 1:
            continue
        nxt = users[0]
        if (
            nxt.op != "call_module"
            or not _pads_known(mods.get(nxt.target))
            or nxt.args != (node,)
            or nxt.kwargs
            or len(node.args) != 1
            or node.kwargs
        ):
            continue
        name = f"_composed_pair_{n}"
        gm.add_submodule(name, ComposedConvPair(mods[node.target], mods[nxt.target], frozen))
        with gm.graph.inserting_before(nxt):
            new = gm.graph.call_module(name, node.args)
        nxt.replace_all_uses_with(new)
        gm.graph.erase_node(nxt)
        gm.graph.erase_node(node)
        n += 1
    if n == 0:
        return model, 0
    gm.graph.lint()
    gm.recompile()
    gm.training = model.training  # the flag only: the shared sub-modules keep their modes
    return gm, n
