"""Gradient attacks on torch classifiers: FGSM, PGD (L-inf / L2), Carlini-Wagner L2, and the
adaptive PGD that also keeps distilled students in agreement.

Numpy in, numpy out, in batches; the model's modes and weights are the same afterwards (its
parameters never receive gradients). The framework-free face, with the argument checks, is
:mod:`distilldetect.attacks`; call that, not this module.

The models return probabilities (the zoo's classifiers and any detector's teacher); the attacks
use the model's ``forward_logits`` (zoo models) when it has one, else the log of its
probabilities, as logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .modes import preserve_modes
from .runtime import distillation_loss, model_device, model_dtype, to_tensor

__all__ = ["pgd", "carlini_wagner_l2"]


def _logits_fn(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    forward_logits = getattr(model, "forward_logits", None)
    if callable(forward_logits):
        return forward_logits
    return lambda x: torch.log(model(x).clamp_min(1e-12))


@contextlib.contextmanager
def _frozen(models: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Eval mode and no parameter gradients for ``models``; everything restored on exit."""
    with contextlib.ExitStack() as stack:
        flags = []
        for m in models:
            stack.enter_context(preserve_modes(m, training=False))
            for p in m.parameters():
                flags.append((p, p.requires_grad))
                p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def _batches(n: int, batch_size: int, verbose: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(range(0, n, batch_size), desc=desc, disable=not verbose, leave=False)


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row, shaped to broadcast against ``t``."""
    shape = (-1,) + (1,) * (t.dim() - 1)
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    factor = (eps / _flat_norm(delta)).clamp(max=1.0)
    return delta * factor


def _clip(x: torch.Tensor, clip: tuple[float, float] | None) -> torch.Tensor:
    return x if clip is None else x.clamp(clip[0], clip[1])


def _student_score(
    log_p_teacher: torch.Tensor,
    students: Sequence[torch.nn.Module],
    x: torch.Tensor,
    temperature: float,
    loss_type: str,
    reduce: str,
) -> torch.Tensor:
    """The distillation score of each row (mean or max over the students), differentiable."""
    p = torch.softmax(log_p_teacher / temperature, dim=-1)  # = sharpen(softmax(z), T)
    scores = torch.stack([distillation_loss(p, s(x), loss_type) for s in students])
    return scores.mean(0) if reduce == "mean" else scores.max(0).values


def pgd(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    clip: tuple[float, float] | None = None,
    seed: int | None = 0,
    batch_size: int = 256,
    verbose: bool = True,
    students: Sequence[torch.nn.Module] = (),
    lam: float = 0.0,
    temperature: float = 1.0,
    loss_type: str = "kld",
    reduce: str = "mean",
    kappa: float | None = None,
    desc: str = "PGD",
) -> np.ndarray:
    """Projected gradient ascent of ``CE(model(x'), y) - lam * score(x')`` in the eps ball.

    With ``kappa``, the first term is the hinged logit margin ``min(max_{j!=y} Z_j - Z_y,
    kappa)`` instead of the cross-entropy: once an image is fooled by ``kappa``, only the score
    term pulls (the loss of Carlini & Wagner's attacks on detectors).

    FGSM is ``steps=1, step_size=eps, random_start=False, norm='linf'``. With ``students``
    (the adaptive attack), each image keeps the iterate with the lowest score among those that
    fool the model (the last iterate if none does).
    """
    dtype, device = model_dtype(model), model_device(model)
    alpha = float(step_size) if step_size is not None else 2.5 * eps / steps
    logits_of = _logits_fn(model)
    adaptive = len(students) > 0
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(int(seed))
    out = np.empty_like(x)
    with _frozen([model, *students]):
        for start in _batches(len(x), batch_size, verbose, desc):
            xb = to_tensor(x[start : start + batch_size], dtype, device)
            yb = torch.from_numpy(np.asarray(y[start : start + batch_size], np.int64)).to(device)
            if random_start:
                if norm == "linf":
                    noise = (torch.rand(xb.shape, generator=gen, dtype=dtype) * 2 - 1) * eps
                else:
                    direction = torch.randn(xb.shape, generator=gen, dtype=dtype)
                    radius = torch.rand((len(xb),), generator=gen, dtype=dtype) * eps
                    shape = (-1,) + (1,) * (xb.dim() - 1)
                    noise = direction / _flat_norm(direction) * radius.view(shape)
                delta = noise.to(device)
            else:
                delta = torch.zeros_like(xb)
            delta = _clip(xb + delta, clip) - xb
            best = xb + delta
            best_score = torch.full((len(xb),), float("inf"), dtype=dtype, device=device)
            for step in range(steps + (1 if adaptive else 0)):
                delta.requires_grad_(True)
                xa = xb + delta
                logits = logits_of(xa)
                if kappa is None:
                    objective = torch.nn.functional.cross_entropy(logits, yb, reduction="none")
                else:
                    true = logits.gather(1, yb[:, None])[:, 0]
                    mask = torch.nn.functional.one_hot(yb, logits.shape[1]).bool()
                    other = logits.masked_fill(mask, float("-inf")).amax(1)
                    objective = (other - true).clamp(max=kappa)
                if adaptive:
                    log_p = torch.log_softmax(logits, dim=-1)
                    score = _student_score(log_p, students, xa, temperature, loss_type, reduce)
                    with torch.no_grad():
                        fooled = logits.argmax(1) != yb
                        better = fooled & (score < best_score)
                        best_score = torch.where(better, score.detach(), best_score)
                        best[better] = xa.detach()[better]
                    if step == steps:  # the last pass only evaluates the final iterate
                        delta = delta.detach()
                        break
                    objective = objective - lam * score
                (grad,) = torch.autograd.grad(objective.sum(), delta)
                with torch.no_grad():
                    if norm == "linf":
                        delta = delta + alpha * grad.sign()
                    else:
                        delta = delta + alpha * grad / _flat_norm(grad)
                    delta = _project(delta, eps, norm)
                    delta = _clip(xb + delta, clip) - xb
            final = (xb + delta).detach()
            if adaptive:
                never = torch.isinf(best_score)
                best[never] = final[never]
                final = best
            out[start : start + len(xb)] = final.cpu().numpy().astype(x.dtype, copy=False)
    return out


def carlini_wagner_l2(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    *,
    steps: int = 100,
    c: float = 1.0,
    binary_search_steps: int = 5,
    learning_rate: float = 0.1,
    kappa: float = 0.0,
    clip: tuple[float, float] | None = None,
    seed: int | None = 0,
    batch_size: int = 256,
    verbose: bool = True,
) -> np.ndarray:
    """Carlini-Wagner L2 (untargeted): minimise ``||d||_2^2 + c * max(Z_y - max_j!=y Z_j, -kappa)``
    with Adam, ``d = eps * tanh(w)`` (so ``|d| <= eps`` per pixel), binary search over ``c``.

    Each image keeps its smallest-L2 perturbation that fools the model; an image never fooled
    keeps the last one tried.
    """
    dtype, device = model_dtype(model), model_device(model)
    logits_of = _logits_fn(model)
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(int(seed))
    out = np.empty_like(x)
    with _frozen([model]):
        for start in _batches(len(x), batch_size, verbose, "C&W L2"):
            xb = to_tensor(x[start : start + batch_size], dtype, device)
            yb = torch.from_numpy(np.asarray(y[start : start + batch_size], np.int64)).to(device)
            n = len(xb)
            lower = torch.zeros(n, dtype=dtype, device=device)
            upper = torch.full((n,), float("inf"), dtype=dtype, device=device)
            const = torch.full((n,), float(c), dtype=dtype, device=device)
            best = xb.clone()
            best_l2 = torch.full((n,), float("inf"), dtype=dtype, device=device)
            last = xb.clone()
            for _ in range(binary_search_steps):
                w = (torch.randn(xb.shape, generator=gen, dtype=dtype) * 1e-3).to(device)
                w.requires_grad_(True)
                opt = torch.optim.Adam([w], lr=learning_rate)
                succeeded = torch.zeros(n, dtype=torch.bool, device=device)
                for _ in range(steps):
                    delta = eps * torch.tanh(w)
                    xa = _clip(xb + delta, clip)
                    logits = logits_of(xa)
                    true = logits.gather(1, yb[:, None])[:, 0]
                    other = logits.masked_fill(
                        torch.nn.functional.one_hot(yb, logits.shape[1]).bool(), float("-inf")
                    ).amax(1)
                    margin = (true - other).clamp(min=-kappa)
                    l2sq = (xa - xb).flatten(1).pow(2).sum(1)
                    loss = (l2sq + const * margin).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        fooled = logits.argmax(1) != yb
                        l2 = l2sq.sqrt()
                        better = fooled & (l2 < best_l2)
                        best_l2 = torch.where(better, l2, best_l2)
                        best[better] = xa.detach()[better]
                        succeeded |= fooled
                        last = xa.detach()
                with torch.no_grad():  # success: a smaller c; failure: a larger one
                    upper = torch.where(succeeded, torch.minimum(upper, const), upper)
                    lower = torch.where(succeeded, lower, torch.maximum(lower, const))
                    const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2).view(
                        -1
                    )
            never = torch.isinf(best_l2)
            best[never] = last[never]
            out[start : start + n] = best.cpu().numpy().astype(x.dtype, copy=False)
    return out
