"""ResNet-50 image encoder in plain ``torch.nn`` (He et al., CVPR 2016), no torchvision.

The module names are chosen so that ``state_dict()`` keys are those of torchvision's
``resnet50`` (``conv1.weight``, ``bn1.running_mean``, ``layer1.0.conv1.weight``,
``layer1.0.downsample.0.weight``, ``layer4.2.bn3.bias``, ``fc.weight`` ...). Weights trained with
torchvision's backbone, or with code that copied its layout (SPIN's HMR), therefore load as they
are.

Architecture (the "v1.5" variant torchvision ships: the stride of a downsampling bottleneck
sits on its 3x3 convolution):

    conv1 7x7/2 (3 -> 64, no bias) -> bn1 -> relu -> maxpool 3x3/2
    layer1: 3 bottlenecks,  64 -> 256 channels, stride 1
    layer2: 4 bottlenecks, 128 -> 512 channels, stride 2
    layer3: 6 bottlenecks, 256 -> 1024 channels, stride 2
    layer4: 3 bottlenecks, 512 -> 2048 channels, stride 2
    avgpool (global) -> 2048-d feature -> fc (optional, 2048 -> num_classes)

A bottleneck is 1x1 (C -> w) -> 3x3 (w -> w, stride) -> 1x1 (w -> 4w), each followed by batch
norm, with ReLU after the first two and after the residual sum. The first block of every stage
projects its shortcut with ``downsample = Sequential(1x1 conv with stride, batch norm)``.
Without ``fc`` the network has 23,508,032 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Bottleneck", "ResNet50", "RESNET50_STAGES", "FEATURE_DIM"]

RESNET50_STAGES: tuple[tuple[int, int, int], ...] = (
    # (bottleneck width, number of blocks, stride of the first block)
    (64, 3, 1),
    (128, 4, 2),
    (256, 6, 2),
    (512, 3, 2),
)
EXPANSION = 4  # a bottleneck's output has 4x its width in channels
FEATURE_DIM = RESNET50_STAGES[-1][0] * EXPANSION  # 2048


class Bottleneck(nn.Module):
    """Residual bottleneck block: ``(B, C_in, H, W) -> (B, 4 * width, H / stride, W / stride)``."""

    def __init__(self, *, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


def _stage(*, in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    """One stage (``layerN``): ``blocks`` bottlenecks, the first one strided and projecting."""
    layers = [Bottleneck(in_channels=in_channels, width=width, stride=stride)]
    layers += [Bottleneck(in_channels=width * EXPANSION, width=width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50(nn.Module):
    """ResNet-50 with torchvision's parameter names.

    ``forward(images (B, 3, H, W)) -> (B, num_classes)`` logits when ``num_classes`` is set,
    else the pooled ``(B, 2048)`` feature (then there is no ``fc`` and no ``fc.*`` keys).
    Any input size of at least 32x32 works (global average pooling); ImageNet-trained weights
    expect 224x224 inputs normalised with the ImageNet mean and standard deviation.

    Initialisation follows common practice (Kaiming-normal convolutions, unit batch-norm
    scales, zero shifts); it only matters for training from scratch and for tests.
    """

    def __init__(self, *, num_classes: int | None = None) -> None:
        super().__init__()
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}")
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        for index, (width, blocks, stride) in enumerate(RESNET50_STAGES, start=1):
            self.add_module(f"layer{index}", _stage(in_channels=in_channels, width=width, blocks=blocks, stride=stride))
            in_channels = width * EXPANSION
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(FEATURE_DIM, num_classes) if num_classes is not None else None
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled trunk feature: ``images (B, 3, H, W) -> (B, 2048)``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ResNet50 expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feature = self.features(images)
        return feature if self.fc is None else self.fc(feature)
