"""Adversarial (TRADES-style) augmentation of a torch student's training batches.

:func:`adversarial_perturb` moves each chosen row of a batch to the point of the L-inf ball
around it where the *student's* output differs most from its output on the clean row
(``KL(student(x) || student(x'))``, PGD with a random start). Used as ``augment_fn`` of
``ModelDistillation.fit`` (the teacher's target stays that of the clean row), it trains a
student whose output does not follow small input moves, so an attacker who moves the teacher
cannot move the student along. The framework-free face, with the argument checks, is
:func:`distilldetect.augment.adversarial_augment`; call that, not this module.

The student's modes (train/eval of every sub-module) and the ``requires_grad`` flags of its
parameters are restored after every call; its parameters never receive gradients here.
"""

from __future__ import annotations

import numpy as np
import torch

from .attacks import _frozen
from .runtime import model_device, model_dtype, to_tensor

__all__ = ["adversarial_perturb"]


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of each row, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def adversarial_perturb(
    student: torch.nn.Module,
    x: np.ndarray,
    rng: np.random.Generator,
    eps: float,
    steps: int,
    step_size: float,
    p_adv: float,
    clip: tuple[float, float] | None = None,
) -> np.ndarray:
    """A copy of ``x`` whose rows are, with probability ``p_adv`` each, PGD-perturbed.

    Parameters
    ----------
    student
        A torch module returning probabilities.
    x
        The batch (numpy, floating).
    rng
        Draws which rows are perturbed and their random starts (uniform in the ball).
    eps, steps, step_size
        L-inf budget, number of signed-gradient ascent steps and their size.
    p_adv
        Probability that a row is perturbed (the others are returned unchanged).
    clip
        Optional ``(low, high)`` bounds of valid inputs.

    Returns
    -------
    numpy.ndarray
        Same shape and dtype as ``x``; every row within ``eps`` of its clean row.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Softmax(-1))
    >>> x = np.zeros((5, 4), np.float32)
    >>> out = adversarial_perturb(net, x, np.random.default_rng(0), 0.1, 3, 0.1, 1.0)
    >>> out.shape, out.dtype, bool(np.abs(out).max() <= 0.1 + 1e-6)
    ((5, 4), dtype('float32'), True)
    """
    rows = np.flatnonzero(rng.random(len(x)) < p_adv)
    start = rng.uniform(-eps, eps, size=(len(rows),) + x.shape[1:])
    out = np.array(x, copy=True)
    if len(rows) == 0:
        return out
    dtype, device = model_dtype(student), model_device(student)
    xc = to_tensor(np.ascontiguousarray(x[rows]), dtype, device)
    delta = to_tensor(start, dtype, device)
    with _frozen([student]):
        with torch.no_grad():
            log_clean = torch.log(student(xc).clamp_min(1e-12))
        for _ in range(steps):
            delta.requires_grad_(True)
            x_adv = xc + delta
            if clip is not None:
                x_adv = x_adv.clamp(clip[0], clip[1])
            log_adv = torch.log(student(x_adv).clamp_min(1e-12))
            loss = _kl_rows(log_clean, log_adv).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
        with torch.no_grad():
            x_adv = xc + delta.detach()
            if clip is not None:
                x_adv = x_adv.clamp(clip[0], clip[1])
    adv = x_adv.cpu().numpy().astype(x.dtype, copy=False)
    out[rows] = adv
    return out
