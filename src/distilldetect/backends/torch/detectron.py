"""Detectron's constrained disagreement classifiers (CDCs) in PyTorch (Ginsberg et al., ICLR 2023,
"A Learning Based Hypothesis Test for Harmful Covariate Shift").

A CDC ``g`` starts as a copy of the base classifier ``f`` (the teacher) and is trained to stay
right on labelled data ``P`` while *disagreeing* with ``f`` on the unlabelled batch ``Q``:

    loss = (sum over a minibatch B of P of CE(g(x_p), y_p)
            + lambda_ * sum over Q of -log(1 - softmax(g(x_q))[f(x_q)])) / |B|

with the paper's ``lambda_ = 1 / (|Q| + 1)`` by default: all of ``Q`` together weighs less
than one instance of ``P``, so ``g`` may not give up ``P`` to disagree on ``Q``.

A harmful shift lets ``g`` disagree on ``Q`` while staying right on ``P``; on in-distribution
``Q`` disagreement conflicts with ``P``. The statistic is the disagreement rate ``phi``: the
fraction of ``Q`` on which ``argmax g != argmax f``. An ensemble trains members one after another,
each on the part of ``Q`` that every earlier member still agrees on; the cumulative rate after each
member is returned. The framework-free face (calibration, p-values, the study's batches) is
:mod:`distilldetect.experiments.detectron`.

The models return probabilities (the zoo's convention); training uses the model's
``forward_logits`` when it has one, else the log of its probabilities.
"""

from __future__ import annotations

import contextlib
import copy
import numbers
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from ...base import check_array, check_positive_float, check_positive_int, check_seed, describe
from .modes import preserve_modes
from .runtime import model_device, model_dtype, to_tensor

__all__ = ["disagreement_loss", "train_cdc", "disagreement_rates", "disagreement"]


def _logits_fn(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    forward_logits = getattr(model, "forward_logits", None)
    if callable(forward_logits):
        return forward_logits
    return lambda x: torch.log(model(x).clamp_min(1e-12))


def disagreement_loss(logits: torch.Tensor, base_labels: torch.Tensor) -> torch.Tensor:
    """Per-instance ``-log(1 - softmax(logits)[base_label])``: small when ``g`` moves away from
    ``f``'s label (computed stably with log-sum-exp).

    Examples
    --------
    >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    >>> [round(v, 3) for v in disagreement_loss(logits, torch.tensor([0, 0])).tolist()]
    [4.018, 0.018]
    """
    masked = logits.masked_fill(F.one_hot(base_labels, logits.shape[1]).bool(), float("-inf"))
    return torch.logsumexp(logits, dim=1) - torch.logsumexp(masked, dim=1)


def _predict(model: torch.nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """``argmax`` of ``model`` on ``x`` in eval mode, without gradients."""
    dtype, device = model_dtype(model), model_device(model)
    out = []
    with preserve_modes(model, training=False), torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = to_tensor(x[start : start + batch_size], dtype, device)
            out.append(model(xb).argmax(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def train_cdc(
    teacher: torch.nn.Module,
    x_p: np.ndarray,
    y_p: np.ndarray,
    x_q: np.ndarray,
    q_labels: np.ndarray,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    lambda_: float | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.nn.Module:
    """One constrained disagreement classifier: a copy of ``teacher`` trained with Adam.

    Parameters
    ----------
    teacher
        The base classifier ``f`` (a ``torch.nn.Module`` returning probabilities); unchanged.
    x_p, y_p
        Labelled data ``P`` (model input) and its class labels.
    x_q, q_labels
        The batch ``Q`` (model input) and ``f``'s labels on it, the labels to disagree with.
    epochs
        Passes over ``P``; every step sees a minibatch of ``P`` and all of ``Q`` (at most
        ``batch_size`` of it, drawn at random when ``Q`` is larger).
    lr, lambda_, batch_size
        Adam's learning rate; the weight of the summed disagreement on ``Q`` against the summed
        cross-entropy on a minibatch of ``P`` (None: ``1 / (|Q| + 1)``, the paper's); the
        minibatch size of ``P``.
    seed
        Seeds the minibatch order and torch's generator (dropout); the global RNG is restored.

    Returns
    -------
    torch.nn.Module
        The trained copy, in eval mode.
    """
    g = copy.deepcopy(teacher)
    for p in g.parameters():
        p.requires_grad_(True)
    dtype, device = model_dtype(g), model_device(g)
    logits_of = _logits_fn(g)
    xq = to_tensor(x_q, dtype, device)
    yq = torch.from_numpy(np.asarray(q_labels, dtype=np.int64)).to(device)
    yp_all = torch.from_numpy(np.asarray(y_p, dtype=np.int64)).to(device)
    optimizer = torch.optim.Adam(g.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    weight = 1.0 / (len(xq) + 1) if lambda_ is None else float(lambda_)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        torch.manual_seed(seed)
        g.train()
        for _ in range(epochs):
            order = rng.permutation(len(x_p))
            for start in range(0, len(x_p), batch_size):
                idx = np.sort(order[start : start + batch_size])
                xp = to_tensor(x_p[idx], dtype, device)
                if len(xq) > batch_size:
                    qi = torch.from_numpy(np.sort(rng.choice(len(xq), batch_size, False)))
                    xqb, yqb = xq[qi], yq[qi]
                else:
                    xqb, yqb = xq, yq
                logits = logits_of(torch.cat([xp, xqb]))
                ce = F.cross_entropy(logits[: len(idx)], yp_all[idx], reduction="sum")
                dis = disagreement_loss(logits[len(idx) :], yqb).sum() * (len(xq) / len(xqb))
                loss = (ce + weight * dis) / len(idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    g.eval()
    return g


def _check_inputs(
    teacher: object, x_p: np.ndarray, y_p: np.ndarray, x_q: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(teacher, torch.nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module, got {describe(teacher)}")
    x_p = check_array(x_p, "x_p", min_ndim=2)
    x_q = check_array(x_q, "x_q", min_ndim=2)
    y_p = check_array(y_p, "y_p")
    if x_p.shape[1:] != x_q.shape[1:]:
        raise ValueError(
            f"x_q must have the instance shape of x_p {x_p.shape[1:]}, got {x_q.shape[1:]}"
        )
    if y_p.ndim != 1 or len(y_p) != len(x_p) or y_p.dtype.kind not in "iu":
        raise ValueError(
            f"y_p must be integer class labels of shape ({len(x_p)},), got {describe(y_p)}"
        )
    return x_p, y_p, x_q


def disagreement_rates(
    teacher: torch.nn.Module,
    x_p: np.ndarray,
    y_p: np.ndarray,
    x_q: np.ndarray,
    *,
    members: int = 1,
    epochs: int = 3,
    lr: float = 1e-3,
    lambda_: float | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> list[float]:
    """Cumulative disagreement rate of an ensemble of CDCs on ``Q``, after each member.

    Member ``m`` is trained (seed ``seed + m``) on the instances of ``Q`` that ``teacher`` and
    every earlier member still agree on; the rate after member ``m`` is the fraction of ``Q`` on
    which at least one of the first ``m + 1`` members disagrees with ``teacher``.

    Parameters
    ----------
    teacher, x_p, y_p, x_q, epochs, lr, lambda_, batch_size
        As in :func:`train_cdc` (``x_q``: the unlabelled batch, at least one instance).
    members
        Ensemble size (>= 1).
    seed
        Seed of the first member.

    Returns
    -------
    list of float
        ``members`` non-decreasing rates in ``[0, 1]``.

    Examples
    --------
    >>> from distilldetect.backends.torch.models import mlp
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 4)).astype(np.float32)
    >>> rates = disagreement_rates(mlp((4,), 2, (8,)), x, (x[:, 0] > 0).astype(int), x[:5],
    ...                            members=2, epochs=1, seed=0)
    >>> len(rates), all(0.0 <= r <= 1.0 for r in rates), rates[0] <= rates[1]
    (2, True, True)
    """
    x_p, y_p, x_q = _check_inputs(teacher, x_p, y_p, x_q)
    members = check_positive_int(members, "members")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_float(lr, "lr")
    if lambda_ is not None and (
        isinstance(lambda_, bool) or not isinstance(lambda_, numbers.Real) or not lambda_ >= 0
    ):
        raise ValueError(f"lambda_ must be None or a number >= 0, got {describe(lambda_)}")
    seed = check_seed(seed)
    if seed is None:
        raise TypeError("seed must be an integer (the CDCs are seeded), got None")
    base = _predict(teacher, x_q)
    agree = np.ones(len(x_q), dtype=bool)
    rates: list[float] = []
    for m in range(members):
        if agree.any():
            g = train_cdc(
                teacher,
                x_p,
                y_p,
                x_q[agree],
                base[agree],
                epochs=epochs,
                lr=lr,
                lambda_=lambda_,
                batch_size=batch_size,
                seed=seed + m,
            )
            agree[np.flatnonzero(agree)] = _predict(g, x_q[agree]) == base[agree]
        rates.append(float(1.0 - agree.mean()))
    return rates


def disagreement(
    teacher: torch.nn.Module,
    x_p: np.ndarray,
    y_p: np.ndarray,
    x_q: np.ndarray,
    *,
    members: int = 1,
    epochs: int = 3,
    lr: float = 1e-3,
    lambda_: float | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Detectron's statistic for ``Q``: the ensemble's final disagreement rate (see
    :func:`disagreement_rates`).

    Examples
    --------
    >>> from distilldetect.backends.torch.models import mlp
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    >>> 0.0 <= disagreement(mlp((4,), 2, (8,)), x, (x[:, 0] > 0).astype(int), x[:5],
    ...                     epochs=1, seed=0) <= 1.0
    True
    """
    return disagreement_rates(
        teacher,
        x_p,
        y_p,
        x_q,
        members=members,
        epochs=epochs,
        lr=lr,
        lambda_=lambda_,
        batch_size=batch_size,
        seed=seed,
    )[-1]
