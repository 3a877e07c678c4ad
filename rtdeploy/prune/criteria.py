"""Channel-importance criteria by name, each a torch-pruning `Importance` (scoring apart from acting).

A criterion maps a torch-pruning dependency group (all layers coupled to one set of channels)
to a 1-D score per channel; the pruner removes the lowest. `cap` is RemoteTrimmer's Channel
Attention Pruning; the others are the standard baselines it is compared with, on the same
pipeline (same fold/strip, same pruner, same fine-tuning), so only the ranking differs.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

from ..errors import ConfigError, RegistryError
from ..models.layers import has_attention
from .fold import attention_scale


class BNScale(tp.importance.Importance):
    """Mean |gamma| over the BatchNorms of a group (network slimming, Liu et al. 2017).

    `attention=True` (CAP): on a folded model each BN's gamma' = s_bar * gamma already holds the
    mean SE attention, so |gamma'| is the CAP importance. `attention=False` (bn): the original
    |gamma| = |gamma'| / s_bar, so on one folded model cap and bn differ exactly by s_bar.
    BNs that had no SE (downsample branches) contribute their plain |gamma| to both, as in the paper.
    """

    def __init__(self, attention: bool):
        self.attention = attention

    def _channel_scores(self, bn: nn.BatchNorm2d, idxs: list[int]) -> torch.Tensor:
        gamma = bn.weight.detach().abs()
        s_bar, in_gamma = attention_scale(bn)
        if s_bar is not None and in_gamma and not self.attention:
            gamma = gamma / s_bar.clamp_min(1e-12)
        elif s_bar is not None and not in_gamma and self.attention:
            gamma = gamma * s_bar  # SE folded into its consumers: |gamma| x s_bar, as CAP ranks
        return gamma[idxs].float()

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        total, count = None, None
        for i, (dep, idxs) in enumerate(group):
            bn = dep.target.module
            if dep.handler != tp.prune_batchnorm_out_channels or not isinstance(bn, nn.BatchNorm2d) \
                    or not bn.affine:
                continue
            root = torch.as_tensor(group[i].root_idxs, dtype=torch.long)
            if total is None:
                n = len(group[0].idxs)
                total, count = torch.zeros(n), torch.zeros(n)
            total.scatter_add_(0, root, self._channel_scores(bn, idxs).cpu())
            count.scatter_add_(0, root, torch.ones(len(root)))
        if total is None:
            # No BatchNorm in this group (e.g. MobileNetV3's hidden classifier Linear): rank by L1
            # magnitude instead of leaving it whole, so every criterion prunes the same groups to
            # the same widths and comparisons at one ratio stay at equal MACs (issue 12).
            return _magnitude()(group)
        return total / count.clamp_min(1)


def _magnitude() -> tp.importance.Importance:
    return Finite(tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer="mean"))


class SeededRandom(tp.importance.Importance):
    """Uniform random scores from its own generator: a baseline that repeats for a given seed."""

    def __init__(self, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, group) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=self.gen)


class Finite(tp.importance.Importance):
    """Wraps a torch-pruning importance: a group whose scores are all zero (e.g. a zero-initialised
    residual BN) makes "mean"/"lamp" normalisers divide 0 by 0, and one NaN poisons the global
    threshold so that nothing is pruned. Such channels score 0, the least important."""

    def __init__(self, inner: tp.importance.Importance):
        self.inner = inner

    def __call__(self, group) -> torch.Tensor | None:
        imp = self.inner(group)
        return None if imp is None else torch.nan_to_num(imp, nan=0.0, posinf=0.0, neginf=0.0)


# Normalisers only matter for --scope global, where scores of different groups are compared:
# BN scales are comparable as they are (that is network slimming's premise, and CAP's point is
# that s_bar spreads them), filter norms depend on fan-in, so those are divided by their mean.
CRITERIA: dict[str, Callable[[int], tp.importance.Importance]] = {
    "cap": lambda seed: BNScale(attention=True),
    "bn": lambda seed: BNScale(attention=False),
    "l1": lambda seed: Finite(tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer="mean")),
    "l2": lambda seed: Finite(tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")),
    "taylor": lambda seed: Finite(tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer="mean")),
    "fpgm": lambda seed: Finite(tp.importance.FPGMImportance(p=2, group_reduction="mean", normalizer="mean")),
    "lamp": lambda seed: Finite(tp.importance.LAMPImportance(p=2, group_reduction="mean")),
    "random": lambda seed: SeededRandom(seed),
}
NEEDS_GRADIENTS = frozenset({"taylor"})  # the pruner runs calibration batches backward first


def list_criteria() -> list[str]:
    return list(CRITERIA)


def check_criterion(name: str) -> None:
    if name not in CRITERIA:
        raise RegistryError(f"unknown --criterion {name!r}; choose one of {', '.join(CRITERIA)}")


def has_folded_attention(model: nn.Module) -> bool:
    return any(attention_scale(m)[0] is not None for m in model.modules())


def check_model_for(name: str, model: nn.Module) -> None:
    """cap needs SE attention (blocks to fold, or already folded): ConfigError otherwise."""
    check_criterion(name)
    if name == "cap" and not has_attention(model) and not has_folded_attention(model):
        raise ConfigError("--criterion cap needs a model with SE attention blocks (e.g. resnet18_se); "
                          "this model has none; use --criterion bn (network slimming) or l1")


def create_criterion(name: str, model: nn.Module, seed: int = 0) -> tp.importance.Importance:
    """The importance for `name`, checked against `model` (already folded, about to be pruned)."""
    check_criterion(name)
    if name == "cap" and not has_folded_attention(model):
        raise ConfigError("--criterion cap needs folded SE attention (capture and fold it first); "
                          "this model has none; use --criterion bn")
    return CRITERIA[name](seed)
