"""Adversarial (TRADES-style) augmentation of a torch student's training batches.

:func:`adversarial_perturb` moves rows of a batch to the point of the L-inf ball around
each where the *student's* output differs most from its output on the clean row
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
    start: np.ndarray,
    eps: float,
    steps: int,
    step_size: float,
    clip: tuple[float, float] | None = None,
) -> np.ndarray:
    """The rows of ``x`` moved by PGD from ``x + start`` (the random start, drawn by the caller).

    Parameters
    ----------
    student
        A torch module returning probabilities.
    x
        The rows to perturb (numpy, floating).
    start
        Their random starts, ``x.shape``, within ``eps``.
    eps, steps, step_size
        L-inf budget, number of signed-gradient ascent steps and their size.
    clip
        Optional ``(low, high)`` bounds of valid inputs.

    Returns
    -------
    numpy.ndarray
        Shape of ``x``, in the student's dtype; every row within ``eps`` of its clean row.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Softmax(-1))
    >>> x = np.zeros((5, 4), np.float32)
    >>> out = adversarial_perturb(net, x, np.full((5, 4), 0.05), 0.1, 3, 0.1)
    >>> out.shape, bool(np.abs(out).max() <= 0.1 + 1e-6)
    ((5, 4), True)
    """
    dtype, device = model_dtype(student), model_device(student)
    xc = to_tensor(np.ascontiguousarray(x), dtype, device)
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
    return x_adv.cpu().numpy()
