"""ResNet with optional SE attention where RemoteTrimmer puts it.

SE blocks sit after the stem's conv-BN-ReLU (before max-pool), and inside every BasicBlock
after bn1+ReLU and after bn2 (before the residual add); never on the downsample branch.
Module names follow torchvision's (conv1, bn1, layer1.0.conv1, fc, ...) so that layer
listings read the same as elsewhere. Without attention the SE slots are Identity.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import make_attention


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, attn: str | None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.se1 = make_attention(attn, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se2 = make_attention(attn, cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.se1(self.relu(self.bn1(self.conv1(x))))
        out = self.se2(self.bn2(self.conv2(out)))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """`stem="imagenet"`: 7x7/2 conv + 3x3/2 max-pool (the paper's, also at 64x64);
    `stem="small"`: 3x3/1 conv, no pooling (tiny test models on 16-32 px inputs)."""

    def __init__(self, layers, widths, num_classes: int, attn: str | None = None,
                 stem: str = "imagenet", zero_init_residual: bool = True):
        super().__init__()
        w0 = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, w0, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, w0, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU(inplace=True)
        self.se = make_attention(attn, w0)
        cin = w0
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = [BasicBlock(cin if j == 0 else w, w, (1 if i == 0 or j else 2), attn)
                      for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self._init(zero_init_residual)

    def _init(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # as the paper's code (torchvision's option): each block starts as identity
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.se(self.relu(self.bn1(self.conv1(x)))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int, attn: str | None = None) -> ResNet:
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, attn)


def tiny_resnet(num_classes: int, attn: str | None = None) -> ResNet:
    """Two one-block stages (16 and 32 channels): the test suite's model. Same code paths
    as resnet18 (SE placement, downsample coupling), a thousandth of the compute."""
    return ResNet([1, 1], [16, 32], num_classes, attn, stem="small")
