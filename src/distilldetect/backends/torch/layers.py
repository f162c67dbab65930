"""Building blocks of the torch zoo: 'same'-padded convolutions and the numpy-layout image base.

Zoo models take images as numpy stores them, ``(n, h, w, c)`` or ``(n, h, w)``, and return class
probabilities; :class:`ImageModel` views the batch as NCHW with channels-last strides (no copy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SameConv2d", "ImageModel"]


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
