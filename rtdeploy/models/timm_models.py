"""timm models as `timm/<name>` (optional extra rtdeploy[timm]; imported only when asked for).

Built with pretrained=False: weights never download (a user's own weights come in through
`rtdeploy import`). timm is not a dependency of the core package.
"""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError, RegistryError


def _timm():
    try:
        import timm
    except ImportError as e:
        raise ConfigError("timm/<name> models need timm; install it with pip install 'rtdeploy[timm]'") from e
    return timm


def create_timm(name: str, num_classes: int) -> nn.Module:
    timm = _timm()
    if not timm.is_model(name):
        raise RegistryError(f"unknown timm model {name!r}; see timm.list_models(), e.g. timm/efficientnet_b0")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def list_timm() -> list[str]:
    return list(_timm().list_models())
