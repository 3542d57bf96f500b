"""ResNet-18 for CIFAR-sized images (3x3 stem, no max-pool, BasicBlocks [2, 2, 2, 2]).

Normalisation without running statistics. Standard BatchNorm keeps running mean/variance
buffers that are updated by each peer from its own batch, so the replicas' buffers would
drift apart (breaking the weight-hash check) and a validator could not reproduce a peer's
eval-mode behaviour. So every BatchNorm here uses ``track_running_stats=False``: it
normalises with the current batch's statistics in training *and* in evaluation, and the
model holds no buffers at all; its whole state is its parameters, which the protocol keeps
identical. The gradient still depends on the whole (public) batch, which a validator has.
The price: evaluation output depends on the evaluation batch (use the same, reasonably
large, batch size everywhere). ``norm="group"`` (GroupNorm, 32 groups) avoids that, since
it normalises each example on its own, at some cost in accuracy at equal steps.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import nn
from torch.nn import functional as F

Norm = Literal["batch", "group"]
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_BLOCKS = (2, 2, 2, 2)
GROUPS = 32


def make_norm(norm: Norm) -> Callable[[int], nn.Module]:
    """A factory of normalisation layers that hold no state besides their parameters."""
    if norm == "batch":
        return lambda channels: nn.BatchNorm2d(channels, track_running_stats=False)
    if norm == "group":
        return lambda channels: nn.GroupNorm(min(GROUPS, channels), channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), norm(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 returning logits.

    Any input size works (the map is halved three times, then averaged). With batch
    statistics a batch must hold more than one value per channel at the last stage
    (1/8 of the input side, rounded up, squared, times the batch size).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, norm: Norm = "batch") -> None:
        super().__init__()
        make = make_norm(norm)
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = make(STAGE_WIDTHS[0])
        stages = []
        in_planes = STAGE_WIDTHS[0]
        for i, (planes, blocks) in enumerate(zip(STAGE_WIDTHS, STAGE_BLOCKS)):
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if b == 0 else 1, make))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # Adaptive pooling instead of a fixed 4x4 one: the same net then fits 28x28 or 8x8 inputs.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(STAGE_WIDTHS[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))
