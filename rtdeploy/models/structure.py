"""Per-layer widths of a (possibly pruned) model, and rebuilding a model from them.

A pruned model differs from its registered architecture only in layer widths and in which
attention blocks were removed. Recording those as plain data lets a checkpoint rebuild the
module without pickling it: create the architecture, resize each layer, load the weights.

Layers: convolutions, batch/layer/group norms and linear layers, whose forward reads widths
from attributes (groups, normalized_shape, num_groups), are recorded by their widths and resized
in place, so subclasses (timm's BatchNormAct2d, Conv2dSame) keep their forward. Any other
tensor a module holds itself (ConvNeXt's `layer_scale`, PReLU's weight, timm's `gamma`, a
layer's extra `gain`, ...) is pruned along with its channels too, and its forward reads only the
tensor, so it is recorded by shape under "tensors" and rebuilt empty at that shape for the
weights to fill.
"""
from __future__ import annotations

import torch
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
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
        return {"type": "ln", "features": m.normalized_shape[0]}
    if isinstance(m, nn.GroupNorm):
        return {"type": "gn", "groups": m.num_groups, "features": m.num_channels}
    return None


# The tensors a layer's widths determine; any other tensor a layer holds (timm's ScaledStdConv2d
# `gain`) is recorded by shape under "tensors", like the tensors of modules that are no layer.
_WIDTH_TENSORS = {"conv": {"weight", "bias"}, "linear": {"weight", "bias"}, "ln": {"weight", "bias"},
                  "gn": {"weight", "bias"}, "bn": {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}}


def _own_tensors(m: nn.Module):
    """(name, tensor) of the parameters and saved buffers `m` holds itself (not its children's)."""
    for name, t in m._parameters.items():
        if t is not None:
            yield name, t
    for name, t in m._buffers.items():
        if t is not None and name not in m._non_persistent_buffers_set:
            yield name, t


def describe(model: nn.Module, removed: list[str] | None = None) -> dict:
    """Plain-data structure: {"layers": {name: spec}, "removed": [module names now Identity],
    "tensors": {state_dict key: shape} of the tensors held by modules not in "layers"}."""
    layers, tensors = {}, {}
    for name, m in model.named_modules():
        if (s := _spec(m)) is not None:
            layers[name] = s
        sized = _WIDTH_TENSORS[s["type"]] if s is not None else set()
        tensors.update({f"{name}.{t_name}" if name else t_name: list(t.shape)
                        for t_name, t in _own_tensors(m) if t_name not in sized})
    return {"layers": layers, "removed": sorted(removed or []), "tensors": tensors}


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels/features per conv, BN and linear layer (for `rtdeploy info`)."""
    return {name: s.get("out", s.get("features")) for name, s in describe(model)["layers"].items()}


def _resized(m: nn.Module, spec: dict) -> nn.Module:
    """`m` resized in place: a subclass (timm's BatchNormAct2d with its activation, Conv2dSame,
    StdConv2d, torchvision's LayerNorm2d) keeps its own forward and constructor-free state.
    The fresh tensors are left empty for the checkpoint's weights to fill."""
    kind = (_spec(m) or {}).get("type")
    if kind is None:
        raise ValueError(f"cannot resize {type(m).__name__}")
    if spec.get("type") != kind:
        raise ValueError(f"a {spec.get('type')} layer recorded where the architecture has {type(m).__name__}")
    if kind == "conv":
        m.in_channels, m.out_channels, m.groups = spec["in"], spec["out"], spec["groups"]
        _fresh(m, "weight", (spec["out"], spec["in"] // spec["groups"], *m.kernel_size))
        _fresh(m, "bias", (spec["out"],))
    elif kind == "bn":
        m.num_features = spec["features"]
        for t_name in ("weight", "bias", "running_mean", "running_var"):
            _fresh(m, t_name, (spec["features"],))
    elif kind == "linear":
        m.in_features, m.out_features = spec["in"], spec["out"]
        _fresh(m, "weight", (spec["out"], spec["in"]))
        _fresh(m, "bias", (spec["out"],))
    else:
        _resized_norm(m, spec)
    return m


def _fresh(m: nn.Module, t_name: str, shape: tuple[int, ...]) -> None:
    """Replace `m`'s own parameter or buffer `t_name` (if it has one) by an empty one of `shape`."""
    current = getattr(m, t_name, None)
    if current is None:
        return
    fresh = torch.empty(shape, dtype=current.dtype)
    if t_name in m._parameters:
        setattr(m, t_name, nn.Parameter(fresh, requires_grad=current.requires_grad))
    else:
        m.register_buffer(t_name, fresh, persistent=t_name not in m._non_persistent_buffers_set)


def _resized_norm(m: nn.LayerNorm | nn.GroupNorm, spec: dict) -> nn.Module:
    # Resized in place: subclasses (torchvision's and timm's LayerNorm2d) keep their forward,
    # and their constructors need not match nn.LayerNorm's.
    if spec["type"] != ("ln" if isinstance(m, nn.LayerNorm) else "gn"):
        raise ValueError(f"a {spec['type']} layer recorded where the architecture has {type(m).__name__}")
    n = spec["features"]
    if isinstance(m, nn.LayerNorm):
        m.normalized_shape = (n,)
    else:
        m.num_groups, m.num_channels = spec["groups"], n
    for t_name in ("weight", "bias"):
        if getattr(m, t_name, None) is not None:
            setattr(m, t_name, nn.Parameter(torch.empty(n)))
    return m


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
    for key, shape in structure.get("tensors", {}).items():
        _reshape_tensor(model, key, tuple(shape))
    return model


def _reshape_tensor(model: nn.Module, key: str, shape: tuple[int, ...]) -> None:
    owner_name, _, t_name = key.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    current = dict(_own_tensors(owner)).get(t_name)
    if current is None:
        raise ValueError(f"structure names tensor {key!r}, which the architecture lacks")
    if (spec := _spec(owner)) is not None and t_name in _WIDTH_TENSORS[spec["type"]]:
        # its shape follows the layer's recorded widths; set alone, the layer's attributes
        # (in_channels, num_features, ...) would disagree with it
        raise ValueError(f"structure records tensor {key!r} of layer {owner_name!r}, whose widths belong under layers")
    if tuple(current.shape) == shape:
        return
    _fresh(owner, t_name, shape)
