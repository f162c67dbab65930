"""Faster CPU forward passes and training steps for torch models whose code is known.

Measured optimisations, all exact up to float rounding, used by
:mod:`distilldetect.backends.torch.runtime` only where they are safe (a third, oneDNN Graph
in fixed-size chunks for the TorchScript copies, is :class:`FusedChunks`):

* **A frozen, batch-norm-folded copy of a teacher.** In eval mode ``BatchNorm(conv(x))`` is an
  affine map of ``conv(x)``; folding it into the convolution's weights and bias removes the
  normalisation pass (about 15 % of a ResNet-20's time on CPU). The copy is private, built once
  per model and rebuilt whenever the model's parameters, buffers, sub-modules or settings change
  (checked on every call, see :func:`fingerprint`): the user's model is never modified, and
  stale outputs are never returned.
* **Row-parallel work on single-threaded workers.** A batch is split into one contiguous block
  of rows per CPU thread and each block runs on a worker thread whose torch intra-op pool has
  one thread. Compared with one call on torch's multi-threaded (OpenMP) intra-op pool this
  avoids a synchronisation barrier inside every operator, which matters most on a busy machine
  where a descheduled OpenMP thread stalls all the others. Training steps are split the same
  way: each worker computes the gradients of its block with :func:`torch.autograd.grad`, and
  the blocks' gradients are added in a fixed order (deterministic).

Both apply only to models built entirely from module types whose ``forward`` is known to treat
rows independently and to change no state (:data:`ROW_WISE_MODULES`, the zoo models and
``nn.Sequential``), on the CPU, without hooks (a hook must see the model itself run once per
batch). Anything else runs as it is.

Examples
--------
>>> from distilldetect.backends.torch.models import resnet
>>> net = resnet().eval()
>>> x = torch.rand(64, 32, 32, 3)
>>> with torch.inference_mode():
...     fast = FastForward(net)(x)
...     plain = net(x)
>>> bool((fast - plain).abs().max() < 1e-5)
True
"""

from __future__ import annotations

import copy
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from .compose import compose_conv_pairs
from .flops import FlopCounter
from .modes import preserve_modes
from .precision import DTYPES, lower
from .seed_student import ComposedStudent, composable, composed_logits, pair_kernels, pair_plan

__all__ = [
    "ROW_WISE_MODULES",
    "MIN_ROWS_PER_WORKER",
    "MIN_WORK_TO_SPLIT",
    "MAX_ROWS_ON_ONE_THREAD",
    "flops_per_row",
    "is_known_model",
    "is_trainable_in_parallel",
    "has_hooks",
    "fingerprint",
    "folded_copy",
    "frozen",
    "is_sealed",
    "n_workers",
    "run_in_blocks",
    "seal",
    "FastForward",
    "FusedChunks",
    "ONEDNN_FUSION",
    "FUSED_ROWS",
    "FUSE_AFTER_ROWS",
    "MAX_FUSED_MODELS",
    "parallel_gradients",
]

#: Leaf and container module types whose forward treats each row on its own in eval mode and
#: changes no state (exact types: a subclass may override ``forward``).
ROW_WISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.ModuleList,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Dropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
)

# Types that draw random numbers or use batch statistics in train mode: a training step that
# meets one of them is not split (random draws would be ordered by the threads' timing).
_TRAIN_MODE_COUPLED: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
)

#: A batch is split only into blocks of at least this many rows...
MIN_ROWS_PER_WORKER: int = 8
#: ...and only when the batch's floating-point operations (forward, x3 for a training step)
#: reach this: below it a thread hop and the idle intra-op pool cost more than they save
#: (measured: a 16 k-parameter student on 28x28 images trained 5x slower split than plain).
MIN_WORK_TO_SPLIT: int = 2_000_000_000
#: Rows per block aimed at when a batch is large: several blocks per worker keep each block's
#: activations cache-sized and balance the workers when one of them is descheduled.
BLOCK_ROWS: int = 64
#: A batch too small to split, of at most this many rows, runs on one single-threaded worker
#: instead of on torch's intra-op threads in the calling thread: their start-up costs more than
#: it saves on small batches (ResNet-20: one row 9 ms on two intra-op threads, 2.6 ms on one;
#: 8 rows 15 vs 13.5 ms), and the other core stays free (a service's event loop). Larger ones
#: (the small CNN's student at 256+ rows) gain from the intra-op threads.
MAX_ROWS_ON_ONE_THREAD: int = 2 * BLOCK_ROWS


def _zoo_types() -> frozenset[type[nn.Module]]:
    from . import models as zoo

    return frozenset(
        {
            zoo.SameConv2d,
            zoo.ResNet,
            zoo._BasicBlock,
            zoo.DistilledCifar10,
            zoo.CNNClassifier,
            zoo.MLP,
        }
    )


_KNOWN: frozenset[type[nn.Module]] | None = None


def _known_types() -> frozenset[type[nn.Module]]:
    global _KNOWN
    if _KNOWN is None:
        _KNOWN = frozenset(ROW_WISE_MODULES) | _zoo_types()
    return _KNOWN


def is_known_model(model: nn.Module) -> bool:
    """Whether every sub-module of ``model`` is of a type whose forward is known to be row-wise.

    Examples
    --------
    >>> is_known_model(nn.Sequential(nn.Linear(3, 2), nn.Softmax(-1)))
    True
    >>> class Custom(nn.Module):
    ...     def forward(self, x):
    ...         return x - x.mean(0)
    >>> is_known_model(nn.Sequential(Custom()))
    False
    """
    known = _known_types()
    return all(type(m) in known for m in model.modules())


def is_trainable_in_parallel(model: nn.Module, optimize: bool = False) -> bool:
    """Whether a training step of ``model`` may be split into row blocks: known code (or the
    caller's ``optimize`` opt-in) and no dropout or batch normalisation.

    Examples
    --------
    >>> is_trainable_in_parallel(nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)))
    False
    """
    return (optimize or is_known_model(model)) and not any(
        isinstance(m, _TRAIN_MODE_COUPLED) for m in model.modules()
    )


def has_hooks(model: nn.Module) -> bool:
    """Whether ``model`` or any sub-module (or torch globally) has forward/backward hooks.

    Examples
    --------
    >>> net = nn.Linear(2, 2)
    >>> has_hooks(net)
    False
    >>> _ = net.register_forward_hook(lambda *a: None)
    >>> has_hooks(net)
    True
    """
    return _global_hooks() or _local_hooks(model)


def _global_hooks() -> bool:
    from torch.nn.modules import module as _module

    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return any(getattr(_module, name, None) for name in names)


def _local_hooks(model: nn.Module) -> bool:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(m, name, None) for m in model.modules() for name in names)


def _on_cpu(model: nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in model.parameters()) and all(
        t.device.type == "cpu" for t in model.buffers()
    )


_SETTING_TYPES = (bool, int, float, str, tuple, type(None))


def fingerprint(model: nn.Module) -> tuple:
    """Everything a frozen copy of ``model`` depends on, cheap to recompute and compare.

    For each sub-module: its identity and type, its plain settings (``eps``, ``stride``...;
    not ``training``), and for each of its parameters and buffers the tensor itself (by weak
    reference, so that a replaced tensor is detected even if its id is reused), its in-place
    version counter, storage address, shape and dtype. Any in-place update
    (``load_state_dict``, an optimiser step, ``p.mul_(2)``), replaced tensor or module, or
    changed setting changes the fingerprint.

    Examples
    --------
    >>> net = nn.Linear(2, 2)
    >>> before = fingerprint(net)
    >>> with torch.no_grad():
    ...     _ = net.weight.mul_(2)
    >>> fingerprint(net) == before
    False
    """
    parts: list[Any] = []
    for name, m in model.named_modules():
        settings = tuple(
            (k, v)
            for k, v in sorted(m.__dict__.items())
            if not k.startswith("_") and k != "training" and isinstance(v, _SETTING_TYPES)
        )
        tensors = []
        for tname, t in list(m._parameters.items()) + list(m._buffers.items()):
            if t is None:
                tensors.append((tname, None))
            else:
                tensors.append(
                    (tname, _WeakTensor(t), t._version, t.data_ptr(), tuple(t.shape), t.dtype)
                )
        parts.append((name, id(m), type(m), settings, tuple(tensors)))
    return tuple(parts)


class _WeakTensor:
    """A weak reference to a tensor that compares equal only to a reference to the same tensor."""

    __slots__ = ("ref",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.ref = weakref.ref(tensor)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _WeakTensor):
            return NotImplemented
        a = self.ref()
        return a is not None and a is other.ref()

    def __hash__(self) -> int:  # pragma: no cover - fingerprints are compared, not hashed
        return id(self.ref())


# ------------------------------------------------------------------------- BN folding
def _fold_conv_bn(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of ``conv`` computing ``bn(conv(x))`` in eval mode (torch's own folding)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = fuse_conv_bn_eval(conv.eval(), bn.eval())
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    pairs = {
        nn.Conv1d: nn.BatchNorm1d,
        nn.Conv2d: nn.BatchNorm2d,
        nn.Conv3d: nn.BatchNorm3d,
    }
    return (
        type(conv) in pairs
        and type(bn) is pairs[type(conv)]
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and conv.out_channels == bn.num_features
    )


def folded_copy(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of a known model with each BatchNorm folded into the conv before it.

    Folds adjacent ``(Conv, BatchNorm)`` pairs of an ``nn.Sequential`` and the
    ``conv1/bn1``, ``conv2/bn2`` pairs of the zoo's residual blocks. The copy shares no tensor
    with ``model`` and has no gradients.

    Returns
    -------
    tuple
        ``(copy, number of BatchNorm layers folded)``.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> fast, n = folded_copy(net)
    >>> n, type(fast[1]).__name__
    (1, 'Identity')
    """
    from .models import _BasicBlock

    fast = copy.deepcopy(model).eval()
    n_folded = 0
    for module in fast.modules():
        if type(module) is nn.Sequential:
            keys = list(module._modules)
            for a, b in zip(keys, keys[1:], strict=False):
                conv, bn = module._modules[a], module._modules[b]
                if conv is not None and bn is not None and _foldable(conv, bn):
                    module._modules[a] = _fold_conv_bn(conv, bn)
                    module._modules[b] = nn.Identity()
                    n_folded += 1
        elif type(module) is _BasicBlock:
            for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2")):
                conv, bn = getattr(module, conv_name), getattr(module, bn_name)
                if _foldable(conv, bn):
                    setattr(module, conv_name, _fold_conv_bn(conv, bn))
                    setattr(module, bn_name, nn.Identity())
                    n_folded += 1
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast, n_folded


#: After this many rows have gone through a model's BN-folded copy, a TorchScript version of
#: it (traced, frozen, ``optimize_for_inference``: oneDNN conv+add+relu fusion, 15-20 % faster
#: on the ResNet-20 teacher) is built for the input's row shape. Building costs ~2 s, about as
#: much as running 2000 rows: waiting until that much has been spent before paying for it (the
#: ski-rental rule) bounds the loss for one-off use at 2x, while repeated use gains. None: never.
JIT_AFTER_ROWS: int | None = 2048


class _Frozen:
    __slots__ = (
        "fingerprint",
        "module",
        "snapshot",
        "rows",
        "jit",
        "source",
        "optimize",
        "precision",
    )

    def __init__(
        self,
        fp: tuple,
        module: nn.Module | None,
        snapshot: list[torch.Tensor],
        source: nn.Module | None = None,
        optimize: bool = False,
        precision: str = "float32",
    ) -> None:
        self.optimize = optimize
        self.precision = precision
        self.fingerprint = fp
        self.module = module  # None: run the model itself (never a reference to it: weak keys)
        self.snapshot = snapshot  # the model's tensors' values when the copy was made
        self.rows = 0
        self.jit: dict[tuple, Any] = {}  # (row shape, dtype) -> TorchScript module or None
        self.source = source  # a private eval copy of the model to trace (folded models only)

    def valid_for(self, fp: tuple, tensors: list[torch.Tensor]) -> bool:
        if self.fingerprint != fp:
            return False
        # Writes through ``.data`` or ``torch.no_grad`` views can bypass version counters:
        # compare the values too (a memcmp-speed pass over the weights, once per batch).
        return all(torch.equal(a, b) for a, b in zip(tensors, self.snapshot, strict=True))


_FROZEN: weakref.WeakKeyDictionary[nn.Module, _Frozen] = weakref.WeakKeyDictionary()
_FROZEN_LOCK = threading.Lock()

#: Sealed models and what was worked out about them once (see :func:`seal`).
_SEALED: weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()


def seal(model: nn.Module, sealed: bool = True) -> None:
    """Promise that ``model`` will not change from now on, or withdraw the promise.

    A sealed model's inference skips the checks that every call otherwise makes so that
    changes between calls are honoured: whether its weights still hold the values the cached
    fast copy was built from (a fingerprint and a value compare), its hooks, device, dtype and
    sub-module types, and the walk that saves and restores every sub-module's mode (a sealed
    model is put in eval mode once, here). On the zoo's ResNet-20 that is about 5 ms per
    call, most of a single-instance request's cost. The promise: no weight or buffer changes
    (no optimiser step, ``load_state_dict``, writes through ``.data``), no new hooks, no
    moves, no ``train()``, for as long as the model is sealed. A changed model would keep
    scoring with the weights it had when the fast copy was made. Training it with this
    backend's :class:`~distilldetect.backends.torch.runtime.Trainer` withdraws the promise
    itself. The model is never modified (besides its mode).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    >>> seal(net)
    >>> is_sealed(net), net.training
    (True, False)
    >>> seal(net, False)
    >>> is_sealed(net)
    False
    """
    with _FROZEN_LOCK:
        if sealed:
            model.eval()
            _SEALED[model] = {}
        else:
            _SEALED.pop(model, None)


def is_sealed(model: nn.Module) -> bool:
    """Whether ``model`` is sealed (:func:`seal`)."""
    return model in _SEALED


def sealed_memo(model: nn.Module, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, worked out once per key for a sealed model (every call otherwise)."""
    memo = _SEALED.get(model)
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach() for t in list(model.parameters()) + list(model.buffers())]


def traced_folded_copy(model: nn.Module, compose: bool = False) -> tuple[nn.Module, int]:
    """An eval-mode copy of any module with each BatchNorm folded into the conv before it,
    found by tracing the forward (``torch.fx``): for models whose code is not known. With
    ``compose``, convolution pairs with nothing between them are composed too
    (:func:`~distilldetect.backends.torch.compose.compose_conv_pairs`).

    A forward that ``torch.fx`` cannot trace (data-dependent control flow...) gives a plain
    eval-mode copy. Returns ``(copy, number of BatchNorm layers folded)``.

    Examples
    --------
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    ...     def forward(self, x):
    ...         return torch.relu(self.bn(self.conv(x)))
    >>> traced_folded_copy(Net().eval())[1]
    1
    """
    from torch.fx.experimental.optimization import fuse

    source = copy.deepcopy(model).eval()
    before = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in source.modules())
    try:
        fast: nn.Module = fuse(source, inplace=True)
    except Exception:  # noqa: BLE001 - not traceable: no folding
        fast = source
    after = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fast.modules())
    for p in fast.parameters():
        p.requires_grad_(False)
    fast.eval()
    if compose:
        fast, _ = compose_conv_pairs(fast, frozen=True)
    return fast, before - after


def frozen(
    model: nn.Module,
    x: torch.Tensor | None = None,
    optimize: bool = False,
    precision: str = "float32",
) -> nn.Module:
    """The module to run for ``model`` in eval mode: a cached fast copy, or ``model`` itself.

    The copy (BN-folded for a model with BatchNorm, :class:`ComposedStudent` for the zoo's
    student) is cached per model and rebuilt when :func:`fingerprint` changes or any
    parameter or buffer value differs from its value when the copy was made. A known model
    with nothing to optimise is returned as it is (no copy is kept). Given the batch ``x``
    about to run, rows are counted and, past :data:`JIT_AFTER_ROWS`, a TorchScript version of a
    folded model is returned instead (built once per row shape and dtype; if building fails,
    the folded copy is kept).

    With ``optimize`` (the caller's opt-in for a model whose code is not known), the copy is
    folded by tracing (:func:`traced_folded_copy`) and its TorchScript version is built at the
    first batch: about two seconds once, then faster forward passes. With a ``precision``
    other than ``'float32'`` that copy is lowered instead (:func:`~distilldetect.backends.
    torch.precision.lower`: computes in bfloat16, answers in float32; no TorchScript).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> frozen(net) is net
    True
    """
    composed = sealed_memo(model, "composable", lambda: composable(model))
    lowered = precision != "float32"
    if (
        not optimize
        and not composed
        and not lowered
        and not sealed_memo(model, "batchnorm", lambda: _has_batchnorm(model))
    ):
        return model
    with _FROZEN_LOCK:
        entry = _FROZEN.get(model)
        matches = entry is not None and (entry.optimize, entry.precision) == (optimize, precision)
        if not (matches and model in _SEALED):  # a sealed model's copy is trusted as it is
            fp = fingerprint(model)
            tensors = _tensors(model)
        if not matches or (model not in _SEALED and not entry.valid_for(fp, tensors)):
            fast: nn.Module | None = None
            source = None
            if lowered:  # the traced, folded, composed copy, in reduced precision
                base = traced_folded_copy(model, compose=True)[0]
                fast = lower(base, DTYPES[precision])
                if fast is None:
                    warnings.warn(
                        f"{type(model).__name__} cannot be traced by torch.fx: it runs in "
                        f"float32, not {precision}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    fast = base
            elif composed:
                fast = ComposedStudent(model)
            else:
                known = is_known_model(model)
                if known:
                    fast, n_folded = folded_copy(model)
                    fast = fast if (n_folded or optimize) else None
                    source = copy.deepcopy(model).eval() if fast is not None else None
                else:  # optimize: folded and composed by tracing; TorchScript traces that copy
                    fast, _ = traced_folded_copy(model, compose=True)
                    source = fast
                if source is not None:
                    for p in source.parameters():
                        p.requires_grad_(False)
            snapshot = [t.clone() for t in tensors] if fast is not None else []
            entry = _Frozen(fp, fast, snapshot, source, optimize, precision)
            _FROZEN[model] = entry
        if entry.module is None:
            return model
        after = 0 if optimize else JIT_AFTER_ROWS
        if entry.source is None or x is None or after is None or len(x) == 0:
            return entry.module
        entry.rows += len(x)
        if entry.rows < after:
            return entry.module
        key = (tuple(x.shape[1:]), x.dtype)
        if key not in entry.jit:
            entry.jit[key] = _script(entry.source, x, entry.rows - len(x))
        scripted = entry.jit[key]
        return entry.module if scripted is None else scripted


def _trace_frozen(source: nn.Module, x: torch.Tensor) -> Any:
    """``source`` traced on two rows of ``x`` and frozen (TorchScript)."""
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent padding
        example = x[:2].clone()
        return torch.jit.freeze(torch.jit.trace(source, example, check_trace=False))


def _script(source: nn.Module, x: torch.Tensor, rows: int = 0) -> Any:
    """Traced, frozen and inference-optimised TorchScript of ``source`` (None if that fails),
    run in oneDNN-Graph-fused chunks where that is available (:class:`FusedChunks`; ``rows``:
    how many rows the model has run already, counted towards :data:`FUSE_AFTER_ROWS`).

    If the process has switched oneDNN Graph on itself (``torch.jit.enable_onednn_fusion``),
    the frozen trace is returned as it is, for torch to fuse: oneDNN Graph cannot run a graph
    that ``optimize_for_inference`` has already converted."""
    try:
        traced = _trace_frozen(source, x)
        # under the lock: this module switches the fusion on only while holding it, so what
        # is read here is the process's own setting; the plain graph is optimised now, never
        # while a fused graph compiles
        with _FUSION_LOCK:
            if torch.jit.onednn_fusion_enabled():
                return traced
            plain = torch.jit.optimize_for_inference(traced)
            _warm(plain, _rows_like(x, 2))
    except Exception:  # noqa: BLE001 - any failure: keep the eager folded copy
        return None
    if not ONEDNN_FUSION or x.dtype != torch.float32:
        return plain
    return FusedChunks(source, plain, rows=rows)


#: Whether :func:`_script` runs float32 TorchScript copies through oneDNN Graph
#: (``torch.jit.enable_onednn_fusion``) in fixed-size chunks (``benchmarks/bench_fusion.py``
#: measures it). The environment variable ``DISTILLDETECT_ONEDNN_FUSION=0`` switches it off.
ONEDNN_FUSION: bool = os.environ.get("DISTILLDETECT_ONEDNN_FUSION", "1") != "0"
#: The chunk sizes of the fused graphs, largest first: oneDNN Graph compiles kernels for fixed
#: shapes, so a block of rows runs as chunks of these sizes and its remainder (fewer rows than
#: the smallest) through the plain ``optimize_for_inference`` graph. One size: as fast as
#: (32, 16, 8) on the benchmark (its blocks are 64 rows), a third of the compiling and memory.
FUSED_ROWS: tuple[int, ...] = (32,)
#: At most this many models get fused graphs per process. torch does not free a oneDNN Graph
#: kernel when its graph is dropped (measured: ~19 MiB per rebuilt copy of the benchmark's
#: student, whatever oneDNN's cache settings), so a model copy rebuilt again and again (a
#: student refitted and rescored, a service reloading detectors) would grow the process
#: without bound; past the cap, new copies run the plain graph.
MAX_FUSED_MODELS: int = 6
_FUSED_MODELS = 0
#: The fused graphs are compiled once the model has run this many rows (0.15-0.25 s of
#: compiling per model, the time of a few hundred ResNet-20 rows: the ski-rental rule, with
#: room), so a model whose copy is rebuilt often (a student between fits) or that runs few
#: rows never pays for them.
FUSE_AFTER_ROWS: int = 2048
_FUSION_LOCK = threading.Lock()
if hasattr(os, "register_at_fork"):  # a fork waits for a compile: the child's switch is off
    os.register_at_fork(
        before=_FUSION_LOCK.acquire,
        after_in_parent=_FUSION_LOCK.release,
        after_in_child=_FUSION_LOCK.release,
    )


def _rows_like(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``rows`` rows of ``x`` (its first rows, repeated if it has fewer), a normal tensor."""
    with torch.inference_mode(False):
        reps = -(-rows // len(x))
        return x.repeat(reps, *([1] * (x.dim() - 1)))[:rows].clone()


def _warm(graph: Any, example: torch.Tensor) -> Any:
    """Run ``graph`` until TorchScript's profiling executor has optimised it; its output."""
    with torch.inference_mode():
        for _ in range(3):  # profiling run(s), then the optimised one
            out = graph(example)
    return out


def _was_fused() -> bool:
    """Whether the graph this thread last ran optimised holds a oneDNN Graph fusion group."""
    try:
        return "prim::oneDNNFusionGroup" in str(torch.jit.last_executed_optimized_graph())
    except Exception:  # noqa: BLE001 - no such introspection in this torch: assume not
        return False


def _close(got: Any, expected: Any) -> bool:
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            return False
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        return bool(torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, scale)))
    if isinstance(expected, (tuple, list)):
        return (
            isinstance(got, (tuple, list))
            and len(got) == len(expected)
            and all(_close(g, e) for g, e in zip(got, expected, strict=True))
        )
    return False


class FusedChunks:
    """A float32 TorchScript copy run in fixed-size chunks through oneDNN Graph.

    oneDNN Graph (``torch.jit.enable_onednn_fusion``) fuses convolutions with their adds and
    activations into kernels compiled for the input's exact shape. Each chunk size of
    :data:`FUSED_ROWS` gets its own frozen trace, compiled once :data:`FUSE_AFTER_ROWS` rows
    have run (``rows`` already, then through ``plain``; or by :meth:`build`) and checked
    against ``plain`` on the same rows (outputs within ``rtol=1e-4``): a graph that cannot be
    built, that oneDNN Graph did not fuse, or that disagrees is never used. Rows left over
    run through ``plain``, an already optimised graph. Needs a model whose eval forward
    treats rows independently, as every model on this path does.

    torch's fusion switch is global: it is on only while the chunk graphs compile (about
    0.2 s per model, once), under a lock, and restored after; compiled graphs keep their
    kernels. TorchScript of the process's own that another thread optimises in that window
    (its second call) is fused too, and an ``optimize_for_inference`` graph fails there:
    a process running such graphs of its own beside distilldetect's fast path should set
    ``DISTILLDETECT_ONEDNN_FUSION=0``.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()).eval()
    >>> x = torch.rand(40, 3, 6, 6)
    >>> plain = torch.jit.optimize_for_inference(_trace_frozen(net, x))
    >>> runner = FusedChunks(net, plain, rows=FUSE_AFTER_ROWS)  # compiled at the first call
    >>> with torch.inference_mode():
    ...     out = runner(x)
    >>> bool(torch.allclose(out, net(x), atol=1e-6)), sorted(runner.graphs) == list(FUSED_ROWS)
    (True, True)
    """

    def __init__(self, source: nn.Module, plain: Any, rows: int = 0) -> None:
        self.source = source
        self.plain = plain
        self.rows = rows
        self.graphs: dict[int, Any] | None = None

    def build(self, x: torch.Tensor) -> None:
        """Compile the chunk graphs now (from rows like ``x``'s), if not done yet and fewer
        than :data:`MAX_FUSED_MODELS` models have them."""
        global _FUSED_MODELS
        with _FUSION_LOCK:
            if self.graphs is not None:
                return
            if _FUSED_MODELS >= MAX_FUSED_MODELS:
                self.graphs = {}
                return
            graphs = {n: self._build(self.source, _rows_like(x, n)) for n in FUSED_ROWS}
            if any(g is not None for g in graphs.values()):
                _FUSED_MODELS += 1  # a kept graph holds kernels torch will not free
            self.graphs = graphs

    def _build(self, source: nn.Module, example: torch.Tensor) -> Any:
        """The fused graph for ``len(example)`` rows, or None (then the plain graph runs)."""
        before = torch.jit.onednn_fusion_enabled()
        try:
            torch.jit.enable_onednn_fusion(True)
            try:
                graph = _trace_frozen(source, example)
                out = _warm(graph, example)
                fused = _was_fused()
            finally:
                torch.jit.enable_onednn_fusion(before)
            if not fused:  # no oneDNN Graph here: a frozen trace is slower than ``plain``
                return None
            with torch.inference_mode():
                expected = self.plain(example)
            return graph if _close(out, expected) else None
        except Exception:  # noqa: BLE001 - no oneDNN Graph for this model: the plain graph
            return None

    def __call__(self, x: torch.Tensor) -> Any:
        if self.graphs is None:
            self.rows += len(x)  # approximate under threads: only the moment of building
            if self.rows < FUSE_AFTER_ROWS or len(x) < min(FUSED_ROWS):
                return self.plain(x)
            self.build(x)
        graphs = self.graphs if self.graphs is not None else {}
        x = x.contiguous()  # the fused kernels were compiled for contiguous rows
        outs: list[Any] = []
        start, n = 0, len(x)
        for rows in FUSED_ROWS:
            graph = graphs.get(rows)
            while graph is not None and n - start >= rows:
                outs.append(graph(x[start : start + rows]))
                start += rows
        if start < n or not outs:
            outs.append(self.plain(x[start:]))
        return outs[0] if len(outs) == 1 else _concat(outs)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _structure(model: nn.Module) -> tuple:
    """What a traced graph of ``model`` depends on but an optimiser step does not change: each
    sub-module's identity, type, settings and mode, and its parameters' identities and shapes."""
    parts: list[Any] = []
    for name, m in model.named_modules():
        settings = tuple(
            (k, v)
            for k, v in sorted(m.__dict__.items())
            if not k.startswith("_") and isinstance(v, _SETTING_TYPES)
        )
        tensors = tuple(
            (k, None if t is None else (id(t), tuple(t.shape), t.dtype))
            for k, t in list(m._parameters.items()) + list(m._buffers.items())
        )
        parts.append((name, id(m), type(m), settings, tensors))
    return tuple(parts)


class _Composed:
    __slots__ = ("structure", "module")

    def __init__(self, structure: tuple, module: nn.Module) -> None:
        self.structure = structure
        self.module = module  # the composed GraphModule, or None: train the student as it is


_COMPOSED: weakref.WeakKeyDictionary[nn.Module, _Composed] = weakref.WeakKeyDictionary()


def _agrees(student: nn.Module, composed: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``composed`` gives ``student``'s outputs on two rows of ``x`` (same random
    numbers for both): the check that tracing kept the forward's meaning."""
    probe = x[:2]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            state = torch.random.get_rng_state()
            a = student(probe)
            torch.random.set_rng_state(state)
            b = composed(probe)
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and bool(torch.allclose(a, b, rtol=1e-3, atol=1e-5))
        )
    except Exception:  # noqa: BLE001 - anything odd: do not use the composed graph
        return False


def composed_student(student: nn.Module, x: torch.Tensor) -> nn.Module:
    """``student`` with its convolution pairs composed for training (``optimize=True`` only),
    sharing its parameters, or ``student`` itself when there is nothing to compose, the
    forward cannot be traced, or the traced graph disagrees with the student on ``x``'s first
    rows. Cached per student and rebuilt when its structure or modes change.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 128, 4, 2, 1), nn.Conv2d(128, 64, 4, 2, 1))
    >>> fast = composed_student(net, torch.rand(4, 3, 32, 32))
    >>> fast is net, {id(p) for p in fast.parameters()} == {id(p) for p in net.parameters()}
    (False, True)
    """
    structure = _structure(student)
    entry = _COMPOSED.get(student)
    if entry is None or entry.structure != structure:
        module, n = compose_conv_pairs(student)
        if n == 0 or not _agrees(student, module, x):
            module = None
        entry = _Composed(structure, module)
        _COMPOSED[student] = entry
    return student if entry.module is None else entry.module


def train_forward(
    student: nn.Module, optimize: bool = False, x: torch.Tensor | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward to train ``student`` with: the composed one for the zoo's student, or with
    ``optimize`` for any student whose traced graph has composable convolution pairs
    (:func:`composed_student`, checked on the batch ``x``) — same parameters, same outputs up
    to rounding, gradients through the composed kernels — else ``student`` itself. Hooks, a
    GPU or an unsupported input size fall back to ``student``.

    Examples
    --------
    >>> net = nn.Linear(2, 2)
    >>> train_forward(net) is net
    True
    """
    if has_hooks(student) or not _on_cpu(student):
        return student
    if not composable(student):
        if optimize and x is not None and is_trainable_in_parallel(student, optimize):
            return composed_student(student, x)  # no dropout or BN: the probe changes nothing
        return student

    def forward(x: torch.Tensor) -> torch.Tensor:
        logits = composed_logits(student, x)
        return student(x) if logits is None else torch.softmax(logits, dim=-1)

    return forward


# ----------------------------------------------------------------------- worker threads
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()
_IN_WORKER = threading.local()


def _init_worker() -> None:
    _IN_WORKER.flag = True
    torch.set_num_threads(1)  # this thread's intra-op pool only (OpenMP ICV is per thread)


def _reset_pool_after_fork() -> None:  # pragma: no cover - exercised only by forking users
    global _POOL, _POOL_SIZE
    _POOL, _POOL_SIZE = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_after_fork)


def n_workers() -> int:
    """Number of row blocks to split work into: torch's intra-op thread count, capped by CPUs.

    ``torch.set_num_threads(1)`` turns the splitting off.

    Examples
    --------
    >>> n_workers() >= 1
    True
    """
    if getattr(_IN_WORKER, "flag", False):
        return 1  # never nest: a worker runs its block single-threaded
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def _pool(size: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE != size:
            old = _POOL
            threads = torch.get_num_threads()
            _POOL = ThreadPoolExecutor(
                size, thread_name_prefix="distilldetect", initializer=_init_worker
            )
            _POOL_SIZE = size
            # Start every worker now, then restore this thread's setting: torch.set_num_threads
            # in a worker also changes the default that threads created later start with.
            barrier = threading.Barrier(size)
            for f in [_POOL.submit(barrier.wait) for _ in range(size)]:
                f.result()
            torch.set_num_threads(threads)
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def _blocks(n: int, parts: int) -> list[slice]:
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def _split_count(rows: int, work_per_row: int) -> int:
    workers = n_workers()
    if rows * work_per_row < MIN_WORK_TO_SPLIT:
        return 1
    per_worker = max(1, round(rows / (workers * BLOCK_ROWS)))
    return max(1, min(workers * per_worker, rows // MIN_ROWS_PER_WORKER))


def run_in_blocks(fn: Callable[[slice], Any], rows: int, parts: int) -> list[Any]:
    """Run ``fn(block)`` for ``parts`` contiguous row blocks on the worker threads (or in turn
    in this thread when there is one worker); results in block order.

    Examples
    --------
    >>> run_in_blocks(lambda s: (s.start, s.stop), 10, 2)
    [(0, 5), (5, 10)]
    """
    blocks = _blocks(rows, parts)
    workers = n_workers()
    if len(blocks) == 1 or workers == 1:  # one thread: blocks in turn, still cache-sized
        return [fn(b) for b in blocks]
    pool = _pool(workers)
    futures: list[Future] = [pool.submit(fn, b) for b in blocks]
    return [f.result() for f in futures]


_FLOPS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()


def flops_per_row(model: nn.Module, x: torch.Tensor) -> int:
    """Floating-point operations of ``model``'s forward on one row shaped like ``x[0]``.

    Counted once per model and row shape with :class:`~distilldetect.backends.torch.flops.
    FlopCounter` (convolutions, matrix products, attention) on a single zero row in eval mode
    (no state changes), then cached. A deterministic measure of work, so the choice between
    paths never depends on timing. A model whose work the counter does not see (none of
    those calls) is assumed worth splitting.

    Examples
    --------
    >>> flops_per_row(nn.Linear(4, 3), torch.zeros(2, 4))
    24
    """
    key = (tuple(x.shape[1:]), x.dtype)
    cache = _FLOPS.setdefault(model, {})
    if key not in cache:
        try:
            counter = FlopCounter()
            with preserve_modes(model, training=False), torch.no_grad(), counter:
                model(torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device))
            cache[key] = counter.total if counter.total > 0 else MIN_WORK_TO_SPLIT
        except Exception:  # a model the counter cannot follow: assume it is worth splitting
            cache[key] = MIN_WORK_TO_SPLIT
    return cache[key]


def _concat(outs: Sequence[Any]) -> Any:
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(outs))
    if isinstance(first, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in first):
        return type(first)(torch.cat([o[i] for o in outs]) for i in range(len(first)))
    raise TypeError(f"cannot join block outputs of type {type(first).__name__}")


class FastForward:
    """Callable running a model's eval-mode forward the fastest safe way.

    For a known model (:func:`is_known_model`) on the CPU without hooks: the cached
    BN-folded copy (:func:`frozen`), with the batch split into row blocks on single-threaded
    workers when there is enough work. Otherwise the model itself, unchanged. Decided on
    every call, so hooks or weights changed between calls are respected.

    The caller puts ``model`` in eval mode and chooses the grad mode (``inference_mode``);
    workers run their blocks under ``inference_mode`` when the caller's thread has grad off.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(-1)).eval()
    >>> with torch.inference_mode():
    ...     FastForward(net)(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self, model: nn.Module, optimize: bool = False, precision: str = "float32"
    ) -> None:
        self.model = model
        self.optimize = optimize
        self.precision = precision
        # Known code, or the caller vouches (optimize) that the model's eval forward treats
        # rows independently and changes no state, as standard classifiers do.
        self._known = sealed_memo(
            model,
            ("known", optimize),
            lambda: (optimize or is_known_model(model)) and _on_cpu(model),
        )

    def eligible(self) -> bool:
        """Whether the optimised path applies now (known model, CPU, no hooks, eval mode)."""
        if not self._known or self.model.training:
            return False
        if _global_hooks():
            return False
        return not sealed_memo(self.model, "hooks", lambda: _local_hooks(self.model))

    def __call__(self, x: torch.Tensor) -> Any:
        if not self.eligible() or x.device.type != "cpu":
            return self.model(x)
        module = frozen(self.model, x, self.optimize, self.precision)
        parts = _split_count(len(x), flops_per_row(self.model, x))
        no_grad = not torch.is_grad_enabled()
        if parts == 1 and (n_workers() == 1 or len(x) > MAX_ROWS_ON_ONE_THREAD):
            return module(x)

        def block(rows: slice) -> Any:
            with torch.inference_mode(no_grad):
                return module(x[rows])

        if parts == 1:  # a small batch: one single-threaded worker (MAX_ROWS_ON_ONE_THREAD)
            return _pool(n_workers()).submit(block, slice(None)).result()
        return _concat(run_in_blocks(block, len(x), parts))


def parallel_gradients(
    student: nn.Module,
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    p: torch.Tensor,
    loss_of_block: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]] | None:
    """Split one training step's forward and backward into row blocks on the workers.

    ``loss_of_block(p_block, q_block)`` must return the block's share of the batch loss (sum
    of per-instance losses divided by the whole batch size), so that the shares add up to the
    batch loss. Returns ``(loss, q, grads)`` — ``grads`` aligned with ``params`` — with the
    blocks' losses, outputs and gradients added/joined in block order, or None when the step
    should not be split (unknown or train-mode-coupled student, hooks, too little work, one
    thread). For the zoo's student the composed kernels (:func:`composed_logits`) are built
    once here; the blocks differentiate against them and the kernels' gradients are carried
    back to the parameters once, after the blocks.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(-1))
    >>> out = parallel_gradients(net, list(net.parameters()), torch.zeros(2, 4),
    ...                          torch.full((2, 3), 1 / 3), lambda p, q: (p * q).sum())
    >>> out is None  # two rows are too little work to split
    True
    """
    if (
        not is_trainable_in_parallel(student, optimize)
        or has_hooks(student)
        or not _on_cpu(student)
    ):
        return None
    parts = _split_count(len(x), 3 * flops_per_row(student, x))
    if parts == 1:
        return None

    kern: dict[str, torch.Tensor] = {}
    leaves: dict[str, torch.Tensor] = {}
    if composable(student):
        xs = x.unsqueeze(-1) if x.dim() == 3 else x
        if (
            xs.dim() == 4
            and xs.shape[-1] == student.convs[0].in_channels
            and pair_plan(student, xs.shape[1], xs.shape[2]) is not None
        ):
            with torch.enable_grad():
                kern = pair_kernels(student)
            leaves = {k: v.detach().requires_grad_(v.requires_grad) for k, v in kern.items()}
    names = [k for k, v in leaves.items() if v.requires_grad]
    inputs = [leaves[k] for k in names] + list(params)

    # an opted-in student of unknown code: its composed graph (parameters shared), if any
    general = train_forward(student, optimize, x) if not leaves else student

    def forward(xb: torch.Tensor) -> torch.Tensor:
        logits = composed_logits(student, xb, leaves) if leaves else None
        # without the zoo's composed path the parameters themselves get the gradients
        return general(xb) if logits is None else torch.softmax(logits, dim=-1)

    def block(rows: slice) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        with torch.enable_grad():
            q = forward(x[rows])
            if not isinstance(q, torch.Tensor):
                raise TypeError(f"distilled_model must return a tensor, got {type(q).__name__}")
            loss = loss_of_block(p[rows], q)
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        return loss.detach(), q.detach(), grads

    results = run_in_blocks(block, len(x), parts)
    loss = results[0][0]
    total = list(results[0][2])
    for block_loss, _, block_grads in results[1:]:
        loss = loss + block_loss
        for i, g in enumerate(block_grads):
            if g is not None:
                total[i] = g if total[i] is None else total[i] + g
    grads: list[torch.Tensor | None] = total[len(names) :]
    used = [(kern[k], g) for k, g in zip(names, total[: len(names)], strict=True) if g is not None]
    if used:  # carry the composed kernels' gradients back to the parameters
        back = torch.autograd.grad(
            [k for k, _ in used], list(params), [g for _, g in used], allow_unused=True
        )
        for i, g in enumerate(back):
            if g is not None:
                grads[i] = g if grads[i] is None else grads[i] + g
    q = torch.cat([r[1] for r in results])
    return loss, q, grads
