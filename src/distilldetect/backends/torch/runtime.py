"""PyTorch backend: batched inference to numpy, the student's training step, the loss in torch.

Models receive float tensors built from the numpy batch without reordering axes: a model for
images stored as ``(n, h, w, c)`` must accept that layout (the models of
:mod:`distilldetect.backends.torch.models` do, and run channels-last internally).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ...base import describe
from ...losses import EPSILON, LOSS_TYPES
from . import fast
from .fast import seal
from .modes import model_lock, preserve_modes
from .optim import Adam

__all__ = [
    "is_model",
    "inference",
    "model_lock",
    "preserve_modes",
    "seal",
    "model_device",
    "n_trainable_parameters",
    "model_dtype",
    "to_tensor",
    "distillation_loss",
    "Trainer",
]


def is_model(obj: Any) -> bool:
    """Whether ``obj`` is a ``torch.nn.Module``."""
    return isinstance(obj, torch.nn.Module)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer (float32 if none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_tensor(
    x: np.ndarray, dtype: torch.dtype, device: torch.device | None = None
) -> torch.Tensor:
    """A tensor of ``dtype`` with the contents of ``x`` (zero-copy when dtype and layout allow).

    Big-endian (non-native byte order) and read-only arrays are copied into native, writeable
    memory first: torch reads only native byte order.

    Examples
    --------
    >>> to_tensor(np.arange(3, dtype=">f4"), torch.float32).tolist()
    [0.0, 1.0, 2.0]
    """
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    if not x.flags.writeable:
        x = np.array(x)  # torch.from_numpy warns on read-only (e.g. memory-mapped) arrays
    tensor = torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
    return tensor if device is None else tensor.to(device)


def _to_numpy(out: Any) -> np.ndarray | tuple[np.ndarray, ...]:
    if isinstance(out, torch.Tensor):
        return out.detach().cpu().numpy()
    if isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
        return tuple(o.detach().cpu().numpy() for o in out)
    raise TypeError(
        f"a torch model must return a tensor or a tuple of tensors, got {describe(out)}"
    )


@contextlib.contextmanager
def inference(
    model: torch.nn.Module, optimize: bool = False, precision: str = "float32"
) -> Iterator[Callable[[np.ndarray], Any]]:
    """Yield ``forward(x) -> numpy`` running ``model`` in eval mode without autograd.

    Safe to call from many threads at once: each call holds the model's lock
    (:func:`model_lock`) while the model is in eval mode, and restores every sub-module's mode
    before releasing it, so the model's modes are the same after each call as before and never
    depend on another thread's call. The weights and ``requires_grad`` flags are untouched.
    Models built from known layers run through :class:`~distilldetect.backends.torch.fast.
    FastForward` (a cached BatchNorm-folded copy, row blocks on single-threaded workers); their
    outputs agree with the plain forward up to float rounding. Other models, and any model with
    hooks, run as they are, unless ``optimize`` is set: the caller then vouches that the
    model's eval-mode forward treats rows independently and changes no state (as standard
    classifiers do), and it runs as a traced, BN-folded TorchScript copy in row blocks (about
    two seconds to build once per model and input shape; rebuilt when the weights change).
    ``precision='bfloat16'`` (with ``optimize``) runs that copy in bfloat16 with float32
    outputs (:mod:`~distilldetect.backends.torch.precision`).

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Softmax(dim=-1))
    >>> with inference(net) as forward:
    ...     forward(np.zeros((4, 3), dtype=np.float32)).shape
    (4, 2)
    """
    dtype = fast.sealed_memo(model, "dtype", lambda: model_dtype(model))
    device = fast.sealed_memo(model, "device", lambda: model_device(model))
    run = fast.FastForward(model, optimize, precision)

    def forward(x: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        xt = to_tensor(x, dtype, device)
        # A sealed model stays in eval mode (fast.seal): no modes to switch. On the fast path
        # (known code, or optimize: row-wise, stateless eval forwards) its calls may overlap;
        # otherwise they take its lock. Other models have every sub-module's mode saved, set
        # and restored around the call, under the lock.
        modes: contextlib.AbstractContextManager
        if fast.is_sealed(model) and not model.training:
            modes = contextlib.nullcontext() if run.eligible() else model_lock(model)
        else:
            modes = preserve_modes(model, training=False)
        # inference mode per call, not for the whole block: a student may train in between
        with modes, torch.inference_mode():
            return _to_numpy(run(xt))

    yield forward


def manual_seed(seed: int) -> None:
    """Seed torch's global random number generator (e.g. before building a model)."""
    torch.manual_seed(seed)


def n_trainable_parameters(model: torch.nn.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def distillation_loss(p: torch.Tensor, q: torch.Tensor, loss_type: str = "kld") -> torch.Tensor:
    """Per-instance distillation loss between teacher ``p`` and student ``q`` probabilities.

    The torch twin of :func:`distilldetect.losses.kld` / :func:`~distilldetect.losses.xent`
    (same clipping); temperature sharpening is applied to ``p`` before this call.

    Examples
    --------
    >>> p = torch.tensor([[0.5, 0.5]])
    >>> float(distillation_loss(p, p))
    0.0
    """
    if loss_type == "kld":
        p = p.clamp(EPSILON, 1.0)
        q = q.clamp(EPSILON, 1.0)
        return (p * (p.log() - q.log())).sum(dim=-1)
    if loss_type == "xent":
        q = (q / q.sum(dim=-1, keepdim=True)).clamp(EPSILON, 1.0 - EPSILON)
        return -(p * q.log()).sum(dim=-1)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def _regularization(student: torch.nn.Module) -> torch.Tensor | None:
    reg = getattr(student, "regularization_loss", None)
    if callable(reg):
        value = reg()
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TypeError(
                "distilled_model.regularization_loss() must return a scalar tensor, "
                f"got {describe(value)}"
            )
        return value.reshape(())
    return None


def _build_optimizer(
    student: torch.nn.Module, optimizer: Any, learning_rate: float | None
) -> torch.optim.Optimizer | Adam:
    params = [p for p in student.parameters() if p.requires_grad]
    if optimizer is None:
        lr = 1e-3 if learning_rate is None else learning_rate
        if all(p.device.type == "cpu" for p in params):
            return Adam(params, lr=lr)  # torch's arithmetic, without torch._dynamo's import
        return torch.optim.Adam(params, lr=lr)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        if learning_rate is None:
            return optimizer(params)
        return optimizer(params, lr=learning_rate)
    if isinstance(optimizer, torch.optim.Optimizer):
        if learning_rate is not None:
            raise ValueError(
                "learning_rate applies only when optimizer is a class; the given optimizer "
                "instance already has its learning rate"
            )
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not owned.intersection(id(p) for p in params):
            raise ValueError(
                "optimizer does not hold any parameter of distilled_model; build it on "
                "distilled_model.parameters() or pass the optimizer class instead"
            )
        return optimizer
    raise TypeError(
        "optimizer must be None, a torch.optim.Optimizer subclass or instance for a torch "
        f"distilled_model, got {describe(optimizer)}"
    )


class Trainer:
    """One optimisation step at a time of the distillation loss for a torch student.

    Used as a context manager: on entry the student goes to train mode and, when ``seed`` is
    given, torch's global random state is forked and seeded (so dropout is reproducible and the
    caller's random state is left as it was); on exit both are restored.

    Parameters
    ----------
    student
        The distilled model, returning probabilities.
    optimizer
        None (Adam), an optimizer class or a ready optimizer instance.
    learning_rate
        Learning rate for an optimizer built here (default 1e-3 for Adam).
    loss_type
        ``'kld'`` or ``'xent'``, used when ``loss_fn`` is None.
    loss_fn
        Optional ``loss_fn(teacher_probs, student_probs) -> scalar tensor`` replacing the mean
        distillation loss.
    seed
        Seed for torch's random numbers during training.
    optimize
        Split steps of a student whose code is not known into row blocks too (the caller
        vouches that its forward treats rows independently).
    """

    def __init__(
        self,
        student: torch.nn.Module,
        optimizer: Any = None,
        learning_rate: float | None = None,
        loss_type: str = "kld",
        loss_fn: Callable | None = None,
        seed: int | None = None,
        optimize: bool = False,
    ) -> None:
        self.student = student
        self.optimize = optimize
        self.optimizer = _build_optimizer(student, optimizer, learning_rate)
        self.loss_type = loss_type
        self.loss_fn = loss_fn
        self.seed = seed
        self.dtype = model_dtype(student)
        self.device = model_device(student)
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> Trainer:
        stack = contextlib.ExitStack()
        if self.seed is not None:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(self.seed)
        stack.enter_context(preserve_modes(self.student, training=True))
        fast.seal(self.student, False)  # training changes the weights: the promise is over
        self._stack = stack
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def step(self, x: np.ndarray, teacher_probs: np.ndarray) -> tuple[float, np.ndarray]:
        """Run one step on a minibatch; return the batch loss and the student's probabilities."""
        xt = to_tensor(x, self.dtype, self.device)
        pt = to_tensor(teacher_probs, self.dtype, self.device)
        split = self._parallel_step(xt, pt)
        if split is not None:
            return split
        q = fast.train_forward(self.student, self.optimize, xt)(xt)
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"distilled_model must return a tensor, got {describe(q)}")
        if self.loss_fn is None:
            loss = distillation_loss(pt, q, self.loss_type).mean()
        else:
            loss = self.loss_fn(pt, q)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError(f"loss_fn must return a scalar tensor, got {describe(loss)}")
            loss = loss.reshape(())
        reg = _regularization(self.student)
        if reg is not None:
            loss = loss + reg
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()), q.detach().cpu().numpy()

    def _parallel_step(self, xt: torch.Tensor, pt: torch.Tensor) -> tuple[float, np.ndarray] | None:
        """The step split into row blocks on single-threaded workers, or None if not splittable.

        Only the default loss (a mean of per-instance losses) can be split: each block adds
        ``sum(block losses) / batch size``; the regulariser is added once, here.
        """
        if self.loss_fn is not None:
            return None
        params = [p for p in self.student.parameters() if p.requires_grad]
        n, loss_type = len(xt), self.loss_type

        def share(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            return distillation_loss(p, q, loss_type).sum() / n

        out = fast.parallel_gradients(self.student, params, xt, pt, share, self.optimize)
        if out is None:
            return None
        loss, q, grads = out
        reg = _regularization(self.student)
        if reg is not None:
            if reg.requires_grad:
                reg_grads = torch.autograd.grad(reg, params, allow_unused=True)
                for i, g in enumerate(reg_grads):
                    if g is not None:
                        grads[i] = g if grads[i] is None else grads[i] + g
            loss = loss + reg.detach()
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads, strict=True):
            if g is None:
                continue
            if p.grad is None:
                p.grad = g
            else:  # a parameter the optimizer does not hold accumulates, as backward() would
                p.grad += g
        self.optimizer.step()
        return float(loss), q.cpu().numpy()


def train_classifier(
    model: torch.nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    epochs: int = 5,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int | None = None,
    verbose: bool = True,
    desc: str = "Teacher",
) -> list[float]:
    """Supervised training of a softmax classifier (the study's teacher) with Adam.

    Uses the model's ``forward_logits`` method when it has one (numerically stable cross-entropy),
    else the log of its probabilities. Seeded like :class:`Trainer` (global RNG restored). Data
    go to the model's device; every sub-module's mode is restored afterwards.

    Returns
    -------
    list of float
        Mean training loss per epoch.

    Examples
    --------
    >>> from distilldetect.backends.torch.models import mlp
    >>> net = mlp((4,), 2, (8,))
    >>> X = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    >>> len(train_classifier(net, X, (X[:, 0] > 0).astype(int), epochs=2, verbose=False, seed=0))
    2
    """
    from tqdm.auto import tqdm

    dtype = model_dtype(model)
    device = model_device(model)
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=learning_rate
    )
    rng = np.random.default_rng(seed)
    history: list[float] = []
    with contextlib.ExitStack() as stack:
        if seed is not None:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(seed)
        stack.enter_context(preserve_modes(model, training=True))
        for epoch in range(epochs):
            order = rng.permutation(len(X))
            total = 0.0
            bar = tqdm(
                range(0, len(X), batch_size),
                desc=f"{desc} epoch {epoch + 1}/{epochs}",
                disable=not verbose,
                leave=False,
            )
            for start in bar:
                idx = np.sort(order[start : start + batch_size])
                xb = to_tensor(X[idx], dtype, device)
                if hasattr(model, "forward_logits"):  # zoo models: stable cross-entropy on logits
                    loss = torch.nn.functional.cross_entropy(model.forward_logits(xb), labels[idx])
                else:
                    probs = model(xb)
                    loss = torch.nn.functional.nll_loss(
                        torch.log(probs.clamp_min(1e-7)), labels[idx]
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                if verbose:
                    bar.set_postfix(loss=total / (start + len(idx)), refresh=False)
            history.append(total / len(X))
    return history
