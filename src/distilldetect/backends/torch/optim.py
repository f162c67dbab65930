"""The default optimizer of a torch student: Adam, computed as ``torch.optim.Adam`` does on CPU.

Every ``torch.optim.Optimizer`` imports torch's compiler stack (``torch._dynamo`` and sympy,
about 800 modules) the first time a parameter group is added or a step is taken: ~70 MiB of
resident memory and ~0.8 s in each process that fits a detector. :class:`Adam` is the same
algorithm with the same operations in the same order as torch's single-tensor CPU
implementation (``torch.optim.adam._single_tensor_adam``, the one torch runs on CPU tensors),
so a fit with the default optimizer gives the same weights as with ``torch.optim.Adam``
(``tests/test_torch_optim.py`` checks it step by step), without that import. Students on
another device, and any optimizer the caller chooses, use ``torch.optim``.

Examples
--------
>>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
>>> opt = Adam([w], lr=0.1)
>>> (w**2).sum().backward()
>>> opt.step()
>>> w.detach()
tensor([ 0.9000, -1.9000])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["Adam"]


class Adam:
    """Adam (Kingma & Ba 2015) with torch's defaults: betas (0.9, 0.999), eps 1e-8, no weight
    decay, no AMSGrad, for parameters on the CPU.

    Parameters
    ----------
    params
        The parameters to optimise (each must be a CPU tensor with ``requires_grad``).
    lr
        Learning rate.
    betas
        Decay rates of the first and second moment estimates.
    eps
        Added to the denominator's square root.

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> opt = Adam([w])
    >>> opt.param_groups[0]["lr"]
    0.001
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        params = list(params)
        if not params:
            raise ValueError("Adam got an empty parameter list")
        for p in params:
            if not isinstance(p, torch.Tensor) or p.device.type != "cpu":
                raise ValueError(f"Adam takes CPU tensors, got {type(p).__name__} on {p.device}")
        self.param_groups: list[dict[str, Any]] = [
            {"params": params, "lr": float(lr), "betas": tuple(betas), "eps": float(eps)}
        ]
        self.state: dict[torch.Tensor, dict[str, Any]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (set to None, as torch's optimizers do by default)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = {
                        # torch keeps the step count in a float32 tensor: the same rounding
                        "step": torch.tensor(0.0, dtype=torch.float32),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                step = state["step"].item()
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1**step
                bias_correction2_sqrt = (1 - beta2**step) ** 0.5
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))
