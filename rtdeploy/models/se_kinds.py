"""Squeeze-and-excitation blocks of every origin: rtdeploy's own, torchvision's, timm's.

All of them compute `x * gate(excite(pool(x)))` with one scale per channel, which is what CAP
needs (capture the mean gate output, fold it away). They differ only in attribute names, so each
kind is described by the submodule whose output is the attention s(x) ("gate") and the
first (squeeze) layer of its bottleneck. Classes are matched exactly, never by name guessing:
a module that merely looks like SE (channels-last variants, SE with extra inputs) is not one.
timm classes are looked up only when timm is already imported (a timm model is present).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from torch import nn

from .layers import SEBlock


@dataclass(frozen=True)
class SEKind:
    """Where an SE class keeps its gate (output s(x) in [0, 1], per channel) and squeeze layer."""

    gate: str
    squeeze: str


_TORCHVISION = ("torchvision.ops.misc", "SqueezeExcitation", SEKind("scale_activation", "fc1"))
_TIMM = [  # (module, class, kind): the NCHW SE modules of timm 0.9 - 1.x
    ("timm.layers.squeeze_excite", "SEModule", SEKind("gate", "fc1")),
    ("timm.layers.squeeze_excite", "SqueezeExcite", SEKind("gate", "fc1")),
    ("timm.layers.squeeze_excite", "EffectiveSEModule", SEKind("gate", "fc")),
    ("timm.models._efficientnet_blocks", "SqueezeExcite", SEKind("gate", "conv_reduce")),
]


def _known() -> dict[type, SEKind]:
    kinds: dict[type, SEKind] = {SEBlock: SEKind("sigmoid", "fc1")}
    for module, cls, kind in [_TORCHVISION, *_TIMM]:
        mod = sys.modules.get(module)  # not imported: no model of that library can exist yet
        if mod is not None and isinstance(getattr(mod, cls, None), type):
            kinds[getattr(mod, cls)] = kind
    return kinds


def se_kind(module: nn.Module) -> SEKind | None:
    """The SE description of `module` (exact class match), or None when it is not an SE block."""
    return _known().get(type(module))


def is_attention_block(module: nn.Module) -> bool:
    return se_kind(module) is not None


def gate_of(block: nn.Module) -> nn.Module:
    """The submodule whose output is the attention s(x) (hooked to capture its mean)."""
    return getattr(block, se_kind(block).gate)


def squeeze_layer(block: nn.Module) -> nn.Module:
    """The bottleneck's first layer (kept whole when SE blocks stay in a pruned model)."""
    return getattr(block, se_kind(block).squeeze)
