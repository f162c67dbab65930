"""The model zoo in PyTorch: teachers and students used by the study and the benchmarks.

Every model here takes images as numpy stores them, ``(n, h, w, c)`` or ``(n, h, w)`` for
grayscale, like the tf.keras versions of the same models, and returns class probabilities
(softmax). Internally the batch is viewed as NCHW with channels-last strides (no copy), the
memory format oneDNN's convolutions prefer on CPU.

Each builder records its name and arguments in ``model.builder_config`` so a saved detector can
rebuild the architecture without pickle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..zoo_args import check_builder_args
from .layers import ImageModel, SameConv2d, _parse_input_shape
from .seed_student import DistilledCifar10, distilled_model_cifar10

__all__ = [
    "BUILDERS",
    "SameConv2d",
    "ImageModel",
    "DistilledCifar10",
    "build",
    "resnet",
    "distilled_model_cifar10",
    "cnn_classifier",
    "mlp",
]


# ------------------------------------------------------------------------------------- ResNet
class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(ImageModel):
    """CIFAR-style ResNet: 3x3 stem, stages of basic blocks, global average pooling, softmax."""

    def __init__(
        self,
        input_shape: Sequence[int] = (32, 32, 3),
        num_classes: int = 10,
        num_blocks: int = 3,
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        kwargs = {
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "num_blocks": num_blocks,
            "widths": list(widths),
        }
        super().__init__(input_shape, "resnet", kwargs)
        _, _, c = _parse_input_shape(input_shape)
        self.stem = nn.Sequential(
            nn.Conv2d(c, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, width in enumerate(widths):
            for b in range(num_blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                blocks.append(_BasicBlock(cin, width, stride))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def resnet(
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    num_blocks: int = 3,
    widths: Sequence[int] = (16, 32, 64),
) -> ResNet:
    """CIFAR ResNet with ``6 * num_blocks + 2`` layers (ResNet-20 for 3 blocks, ~0.27 M parameters).

    Examples
    --------
    >>> sum(p.numel() for p in resnet().parameters()) > 250_000
    True
    """
    return ResNet(input_shape, num_classes, num_blocks, widths)


# ------------------------------------------------------------------ a plain CNN classifier
class CNNClassifier(ImageModel):
    """Conv-ReLU-(BatchNorm)-MaxPool blocks, then dense layers with dropout, softmax output."""

    def __init__(
        self,
        input_shape: Sequence[int] = (28, 28),
        num_classes: int = 10,
        filters: Sequence[int] = (32, 64),
        kernel_size: int = 3,
        dense: Sequence[int] = (128,),
        dropout: float = 0.25,
        batch_norm: bool = False,
    ) -> None:
        kwargs = {
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "filters": list(filters),
            "kernel_size": kernel_size,
            "dense": list(dense),
            "dropout": dropout,
            "batch_norm": batch_norm,
        }
        super().__init__(input_shape, "cnn_classifier", kwargs)
        h, w, c = _parse_input_shape(input_shape)
        layers: list[nn.Module] = []
        cin = c
        for f in filters:
            layers.append(nn.Conv2d(cin, f, kernel_size, padding=kernel_size // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(f))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            cin = f
            pad = kernel_size // 2
            h = (h + 2 * pad - kernel_size + 1) // 2
            w = (w + 2 * pad - kernel_size + 1) // 2
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        width = cin * h * w
        for d in dense:
            head += [nn.Dropout(dropout), nn.Linear(width, d), nn.ReLU()]
            width = d
        head += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
        self.head = nn.Sequential(*head)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def cnn_classifier(
    input_shape: Sequence[int] = (28, 28),
    num_classes: int = 10,
    filters: Sequence[int] = (32, 64),
    kernel_size: int = 3,
    dense: Sequence[int] = (128,),
    dropout: float = 0.25,
    batch_norm: bool = False,
) -> CNNClassifier:
    """A small CNN classifier (the study's Fashion-MNIST teacher; also usable as a student).

    Examples
    --------
    >>> cnn_classifier()(torch.zeros(2, 28, 28)).shape
    torch.Size([2, 10])
    """
    return CNNClassifier(input_shape, num_classes, filters, kernel_size, dense, dropout, batch_norm)


# -------------------------------------------------------------------------------- an MLP
class MLP(ImageModel):
    """Flatten → hidden ReLU layers → softmax; for any input shape."""

    def __init__(
        self,
        input_shape: Sequence[int] = (28, 28),
        num_classes: int = 10,
        hidden: Sequence[int] = (64,),
        dropout: float = 0.0,
    ) -> None:
        kwargs = {
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "hidden": list(hidden),
            "dropout": dropout,
        }
        super().__init__(input_shape, "mlp", kwargs)
        width = math.prod(int(s) for s in input_shape)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for inputs of any shape (flattened per instance)."""
        return self.net(x.flatten(1))


def mlp(
    input_shape: Sequence[int] = (28, 28),
    num_classes: int = 10,
    hidden: Sequence[int] = (64,),
    dropout: float = 0.0,
) -> MLP:
    """A multilayer perceptron on flattened inputs, softmax output.

    Examples
    --------
    >>> mlp((8, 8), 10, (16,))(torch.zeros(3, 8, 8)).shape
    torch.Size([3, 10])
    """
    return MLP(input_shape, num_classes, hidden, dropout)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet": resnet,
    "distilled_model_cifar10": distilled_model_cifar10,
    "cnn_classifier": cnn_classifier,
    "mlp": mlp,
}


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name with keyword arguments (as stored in ``builder_config``).

    Examples
    --------
    >>> build("mlp", input_shape=[4], num_classes=2, hidden=[3]).builder_config["name"]
    'mlp'
    """
    check_builder_args(name, kwargs)
    return BUILDERS[name](**kwargs)


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A new model of ``model``'s architecture with weights drawn afresh from ``seed``.

    A zoo model is rebuilt from its ``builder_config`` (if it still is that model; on its
    device and dtype); any other module is deep-copied and every sub-module's
    ``reset_parameters()`` (torch's own initialisation, batch-norm running statistics
    included) runs under ``torch.manual_seed(seed)``, which seeds torch's global generator.
    ``model`` is not touched.

    Raises
    ------
    ValueError
        If a parameter is not redrawn by a sub-module's ``reset_parameters()`` (its values
        would be copied, not drawn; the message names it), or the module cannot be copied.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> a, b = fresh_copy(net, 0), fresh_copy(net, 0)
    >>> bool(torch.equal(a[0].weight, b[0].weight)), bool(torch.equal(a[0].weight, net[0].weight))
    (True, False)
    """
    import copy

    config = getattr(model, "builder_config", None)
    first = next(model.parameters(), None)
    torch.manual_seed(int(seed))
    if isinstance(config, dict) and config.get("name") in BUILDERS:
        rebuilt = build(config["name"], **dict(config.get("kwargs", {})))
        shapes = [(n, p.shape) for n, p in model.named_parameters()]
        if repr(rebuilt) == repr(model) and shapes == [
            (n, p.shape) for n, p in rebuilt.named_parameters()
        ]:  # still the zoo's model (not changed after it was built)
            return rebuilt if first is None else rebuilt.to(device=first.device, dtype=first.dtype)
        torch.manual_seed(int(seed))
    try:
        twin = copy.deepcopy(model)
    except Exception as err:  # noqa: BLE001 - whatever deepcopy meets in a user's module
        raise ValueError(
            f"cannot copy a {type(model).__name__} ({type(err).__name__}: {err}); build the "
            "students with your own code instead"
        ) from err
    versions = {id(p): p._version for p in twin.parameters()}
    for module in twin.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    # drawn = written in place by a reset (a parameter behind a reparametrisation hook, e.g.
    # spectral_norm's weight_orig, is not: the reset initialises the computed weight)
    missed = [name for name, p in twin.named_parameters() if p._version == versions[id(p)]]
    if missed:
        raise ValueError(
            f"cannot draw new weights for a {type(model).__name__}: parameter(s) "
            f"{missed[:3]} belong to no sub-module with reset_parameters(); build the students "
            "with your own code instead"
        )
    return twin
