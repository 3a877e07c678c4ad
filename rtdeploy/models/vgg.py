"""VGG16 with BatchNorm and optional SE after every conv-BN-ReLU stage.

The head is global-average-pool + Linear (the paper's exact head is unknown; torchvision's
4096-wide classifier assumes 224 px inputs and would dominate the parameter count at 64 px).
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import make_attention

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg, num_classes: int, attn: str | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v),
                       nn.ReLU(inplace=True), make_attention(attn, v)]
            cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16(num_classes: int, attn: str | None = None) -> VGG:
    return VGG(VGG16_CFG, num_classes, attn)
