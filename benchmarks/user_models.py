"""Models written the way a user writes them (outside distilldetect's zoo), for the benchmarks.

A torchvision-style CIFAR ResNet-20 teacher and a plain student with the seed's layout, both on
NCHW float32 batches: nothing here is known to distilldetect's speed code, so they measure the
general path that a user's own model takes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class UserResNet20(nn.Module):
    """ResNet-20 for 32x32x3 images (3 stages x 3 blocks, 16/32/64 filters), softmax output."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return torch.softmax(self.fc(out), dim=-1)


class UserStudent(nn.Module):
    """The seed study's student layout (conv 256/128/64, k4 s2, dense 40), as a user would write it."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 256, 4, 2, 1)
        self.c2 = nn.Conv2d(256, 128, 4, 2, 1)
        self.c3 = nn.Conv2d(128, 64, 4, 2, 1)
        self.fc1 = nn.Linear(64 * 4 * 4, 40)
        self.fc2 = nn.Linear(40, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x)
        x = F.relu(self.c2(x))
        x = F.relu(self.c3(x))
        return torch.softmax(self.fc2(self.fc1(x.flatten(1))), dim=-1)
