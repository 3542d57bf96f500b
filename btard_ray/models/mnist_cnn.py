"""The small MNIST CNN of the BTARD-SGD replication study, adapted to the input size.

The network (PyTorch's classic MNIST example, returning logits instead of log-softmax)::

    conv(C->10, k5) -> max-pool 2 -> ReLU
    conv(10->20, k5) -> Dropout2d -> max-pool 2 -> ReLU
    flatten -> linear(->50) -> ReLU -> dropout -> linear(50->num_classes)

Padding rule: the convolutions are "valid" (padding 0), as in the original, whenever that
leaves at least one pixel at the end, i.e. when the input is at least 16x16 (28x28 ->
24 -> 12 -> 8 -> 4, flattened 20*4*4 = 320). Smaller inputs use "same" convolutions
(padding 2), so only the pools shrink the map (digits: 8 -> 8 -> 4 -> 4 -> 2, flattened 80).
The flattened size is measured by a forward pass at construction, not hand-computed.
"""

from __future__ import annotations

import torch
from torch import nn

KERNEL = 5
#: Below this side length "valid" convolutions would shrink the map to nothing.
MIN_VALID_SIDE = 16
MIN_SIDE = 4  # "same" convolutions still need two 2x poolings to leave one pixel


def conv_padding(height: int, width: int) -> int:
    """The padding both convolutions use for an input of ``height`` x ``width`` (see module)."""
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"mnist_cnn needs inputs of at least {MIN_SIDE}x{MIN_SIDE}, got {height}x{width}")
    return 0 if min(height, width) >= MIN_VALID_SIDE else KERNEL // 2


class MnistCNN(nn.Module):
    """The replication study's MNIST CNN for (in_channels, H, W) inputs; returns logits."""

    def __init__(self, in_channels: int = 1, input_hw: tuple[int, int] = (28, 28), num_classes: int = 10) -> None:
        super().__init__()
        height, width = input_hw
        padding = conv_padding(height, width)
        self.padding = padding
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 10, kernel_size=KERNEL, padding=padding),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(10, 20, kernel_size=KERNEL, padding=padding),
            nn.Dropout2d(),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )
        self.flat_features = self._measure_flat_features(in_channels, height, width)
        self.classifier = nn.Sequential(
            nn.Linear(self.flat_features, 50),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(50, num_classes),
        )

    def _measure_flat_features(self, in_channels: int, height: int, width: int) -> int:
        # In eval mode: a training-mode Dropout2d would draw from torch's generator and so
        # shift the random initialisation of the layers built after this.
        self.features.eval()
        with torch.no_grad():
            out = self.features(torch.zeros(1, in_channels, height, width))
        self.features.train()
        return int(out.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
