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

__all__ = [
    "BUILDERS",
    "SameConv2d",
    "ImageModel",
    "build",
    "resnet",
    "distilled_model_cifar10",
    "cnn_classifier",
    "mlp",
]


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) for one spatial axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A 2-D convolution with TensorFlow's ``padding='same'`` (asymmetric when needed).

    Examples
    --------
    >>> SameConv2d(1, 4, 4, stride=2)(torch.zeros(1, 1, 7, 7)).shape
    torch.Size([1, 4, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        bias: bool = True,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        top, bottom = _same_padding(x.shape[-2], kh, sh)
        left, right = _same_padding(x.shape[-1], kw, sw)
        if top or bottom or left or right:
            if top == bottom and left == right:
                return F.conv2d(x, self.weight, self.bias, self.stride, (top, left))
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride)


def _out_size(size: int, strides: Sequence[int]) -> int:
    for s in strides:
        size = math.ceil(size / s)
    return size


def _parse_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    raise ValueError(f"input_shape must be (h, w) or (h, w, c), got {input_shape!r}")


class ImageModel(nn.Module):
    """Base for zoo models: NHWC / NHW numpy-layout input, softmax output.

    Subclasses implement ``logits(x_nchw)``; ``forward_logits`` takes the numpy layout.
    """

    def __init__(self, input_shape: Sequence[int], builder: str, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.builder_config = {"name": builder, "kwargs": dict(kwargs)}

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images in numpy layout ``(n, h, w[, c])``."""
        if x.dim() == 3:
            x = x.unsqueeze(-1)
        if x.dim() != 4:
            raise ValueError(
                f"expected images (n, h, w) or (n, h, w, c), got shape {tuple(x.shape)}"
            )
        return self.logits(x.permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward_logits(x), dim=-1)


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
    was_training = clf.training
    with torch.no_grad():
        num_classes = int(clf.eval()(torch.zeros(1, *shape)).shape[-1])
    clf.train(was_training)
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
    if name not in BUILDERS:
        raise ValueError(f"unknown model builder {name!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[name](**kwargs)
