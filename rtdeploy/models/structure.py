"""Per-layer widths of a (possibly pruned) model, and rebuilding a model from them.

A pruned model differs from its registered architecture only in layer widths and in which
attention blocks were removed. Recording those as plain data lets a checkpoint rebuild the
module without pickling it: create the architecture, resize each layer, load the weights.
"""
from __future__ import annotations

from torch import nn


def _conv_spec(m: nn.Conv2d) -> dict:
    return {"type": "conv", "in": m.in_channels, "out": m.out_channels, "groups": m.groups}


def _spec(m: nn.Module) -> dict | None:
    if isinstance(m, nn.Conv2d):
        return _conv_spec(m)
    if isinstance(m, nn.BatchNorm2d):
        return {"type": "bn", "features": m.num_features}
    if isinstance(m, nn.Linear):
        return {"type": "linear", "in": m.in_features, "out": m.out_features}
    return None


def describe(model: nn.Module, removed: list[str] | None = None) -> dict:
    """Plain-data structure: {"layers": {name: spec}, "removed": [module names now Identity]}."""
    layers = {name: s for name, m in model.named_modules() if (s := _spec(m)) is not None}
    return {"layers": layers, "removed": sorted(removed or [])}


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels/features per conv, BN and linear layer (for `rtdeploy info`)."""
    return {name: s.get("out", s.get("features")) for name, s in describe(model)["layers"].items()}


def _resized(m: nn.Module, spec: dict) -> nn.Module:
    if isinstance(m, nn.Conv2d):
        return nn.Conv2d(spec["in"], spec["out"], m.kernel_size, m.stride, m.padding, m.dilation,
                         spec["groups"], bias=m.bias is not None, padding_mode=m.padding_mode)
    if isinstance(m, nn.BatchNorm2d):
        return nn.BatchNorm2d(spec["features"], m.eps, m.momentum, m.affine, m.track_running_stats)
    if isinstance(m, nn.Linear):
        return nn.Linear(spec["in"], spec["out"], bias=m.bias is not None)
    raise ValueError(f"cannot resize {type(m).__name__}")


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def apply_structure(model: nn.Module, structure: dict) -> nn.Module:
    """Resize `model`'s layers in place to `structure` (from `describe`) and remove the
    listed blocks. Raises ValueError when the structure names a layer the model lacks."""
    for name in structure.get("removed", []):
        set_module(model, name, nn.Identity())
    modules = dict(model.named_modules())
    for name, spec in structure.get("layers", {}).items():
        if name not in modules:
            raise ValueError(f"structure names layer {name!r}, which the architecture lacks")
        if _spec(modules[name]) != spec:
            set_module(model, name, _resized(modules[name], spec))
    return model
