"""Model registry (timm-style): look models up by name; a miss lists the valid names.

An SE variant is a configuration of its base model (`resnet18` + attn="se"), not a copy.
Any torchvision classification model is reachable as `tv/<name>` and, with the optional extra
rtdeploy[timm], any timm model as `timm/<name>` (random init: nothing is downloaded), its head
sized to the dataset's classes.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import RegistryError
from .resnet import resnet18, tiny_resnet
from .vgg import vgg16

_REGISTRY: dict[str, Callable[[int], nn.Module]] = {}
TV_PREFIX = "tv/"
TIMM_PREFIX = "timm/"


def register(name: str, factory: Callable[[int], nn.Module]) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = factory


for _base, _fn in {"resnet18": resnet18, "vgg16": vgg16, "tiny": tiny_resnet}.items():
    register(_base, lambda n, fn=_fn: fn(n, attn=None))
    register(f"{_base}_se", lambda n, fn=_fn: fn(n, attn="se"))


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def list_models(include_torchvision: bool = False) -> list[str]:
    names = sorted(_REGISTRY)
    if include_torchvision:
        names += [TV_PREFIX + n for n in _torchvision_names()]
    return names


def create_model(name: str, num_classes: int) -> nn.Module:
    """Build a registered model (random init) with a `num_classes`-way head."""
    if num_classes < 2:
        raise RegistryError(f"a classifier needs at least 2 classes, got {num_classes}")
    if name.startswith(TV_PREFIX):
        return _create_torchvision(name[len(TV_PREFIX):], num_classes)
    if name.startswith(TIMM_PREFIX):
        from .timm_models import create_timm

        return create_timm(name[len(TIMM_PREFIX):], num_classes)
    if name not in _REGISTRY:
        raise RegistryError(
            f"unknown architecture {name!r}; choose one of {', '.join(list_models())} "
            f"or tv/<torchvision classification model>, e.g. tv/mobilenet_v2, "
            f"or timm/<timm model> (with rtdeploy[timm]), e.g. timm/efficientnet_b0"
        )
    return _REGISTRY[name](num_classes)


def _create_torchvision(name: str, num_classes: int) -> nn.Module:
    import torchvision.models as tvm

    if name not in _torchvision_names():
        raise RegistryError(
            f"unknown torchvision classification model {name!r}; see "
            f"torchvision.models.list_models(module=torchvision.models), e.g. tv/mobilenet_v2"
        )
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
