"""Squeeze-and-Excitation, exactly as RemoteTrimmer uses it (Hu et al. 2018, reduction 16)."""
from __future__ import annotations

import torch
from torch import nn


class SEBlock(nn.Module):
    """Global average pool -> Linear(C, C/r) -> ReLU -> Linear(C/r, C) -> Sigmoid; output x * s.

    The sigmoid is its own module so that attention capture can hook it (see attention.py).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)  # == C/16 for every paper width; >=1 for tiny models
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)
        self.sigmoid = nn.Sigmoid()

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image, per-channel attention s(x) in (0, 1), shape [N, C]."""
        s = self.pool(x).flatten(1)
        return self.sigmoid(self.fc2(self.relu(self.fc1(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)[:, :, None, None]


def make_attention(kind: str | None, channels: int) -> nn.Module:
    """An attention block for `channels`, or Identity when the model is built without attention."""
    if kind is None:
        return nn.Identity()
    if kind == "se":
        return SEBlock(channels)
    raise ValueError(f"unknown attention kind {kind!r}; use 'se' or None")


def attention_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Every SE block of `model` (rtdeploy's, torchvision's or timm's; see se_kinds), by
    qualified module name, in order of definition."""
    from .se_kinds import is_attention_block  # se_kinds imports SEBlock from here

    return {name: m for name, m in model.named_modules() if is_attention_block(m)}


def has_attention(model: nn.Module) -> bool:
    return bool(attention_blocks(model))
