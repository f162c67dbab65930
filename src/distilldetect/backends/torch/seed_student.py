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

import torch
from torch import nn
from torch.nn import functional as F

from . import compose
from .compose import PairPlan
from .layers import ImageModel, SameConv2d, _out_size, _parse_input_shape, _same_padding
from .modes import preserve_modes

__all__ = [
    "DistilledCifar10",
    "distilled_model_cifar10",
    "composable",
    "composed_logits",
    "pair_kernels",
    "pair_plan",
    "ComposedStudent",
]


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
# convolutions compose into one convolution of the input (:mod:`.compose`, which any model can
# use with ``optimize=True``); here only what this model's TensorFlow-style 'same' padding needs.


def pair_plan(model: nn.Module, h: int, w: int) -> PairPlan | None:
    """Geometry of the model's first two convolutions for ``h x w`` inputs ('same' padding)."""
    if len(model.convs) < 2:
        return None
    c1, c2 = model.convs[0], model.convs[1]
    if c1.padding != (0, 0) or c2.padding != (0, 0) or c1.bias is None or c2.bias is None:
        return None
    k1, s1, k2, s2 = c1.kernel_size[0], c1.stride[0], c2.kernel_size[0], c2.stride[0]
    h1, w1 = -(-h // s1), -(-w // s1)
    pads1 = (*_same_padding(h, k1, s1), *_same_padding(w, k1, s1))
    pads2 = (*_same_padding(h1, k2, s2), *_same_padding(w1, k2, s2))
    return compose.pair_plan(c1, c2, h, w, pads1, pads2)


def pair_kernels(model: nn.Module) -> dict[str, torch.Tensor]:
    """Composed kernels of the model's first two convolutions (:func:`.compose.pair_kernels`)."""
    return compose.pair_kernels(model.convs[0], model.convs[1])


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
    return _pair_macs(model) >= compose.MIN_MACS_TO_COMPOSE  # one threshold for every model


def _pair_macs(model: nn.Module) -> int:
    """Multiply-adds per image of the model's first two convolutions, at its input shape."""
    h, w = int(model.input_shape[0]), int(model.input_shape[1])
    c1, c2 = model.convs[0], model.convs[1]
    h1, w1 = -(-h // c1.stride[0]), -(-w // c1.stride[1])
    h2, w2 = -(-h1 // c2.stride[0]), -(-w1 // c2.stride[1])
    return compose.pair_macs(c1, c2, h1, w1, h2, w2)


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
    h = compose.pair_forward(x, plan, pair_kernels(model) if kern is None else kern)
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
