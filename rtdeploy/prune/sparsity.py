"""Sparsity regularisation before pruning (`compress --sparsity-epochs N`), from torch-pruning.

A few epochs of training with a penalty that drives whole channels towards zero, so the channels
the criterion then removes carry less of the function:
- cap, bn: L1 on the BatchNorm scales (network slimming, Liu et al. 2017): these criteria rank
  channels by |gamma| (CAP's gamma has the mean SE attention folded in), so the penalty acts on
  exactly what they read. torch-pruning's BNScalePruner.regularize.
- every other criterion: group lasso over each coupled channel group (DepGraph, Fang et al.
  2023), with torch-pruning's growing per-group weights. GroupNormPruner.regularize.
The regulariser adds its gradient to .grad after backward and before the optimiser step.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

from ..errors import ConfigError
from ..models.layers import attention_blocks
from ..models.se_kinds import squeeze_layer
from .pruner import classifier_of

BN_CRITERIA = frozenset({"cap", "bn"})


def regularizer_name(criterion: str) -> str:
    return "bn-l1 (network slimming)" if criterion in BN_CRITERIA else "group-lasso (DepGraph)"


def check_sparsity(epochs: int, reg: float) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"--sparsity-epochs must be an integer >= 0, got {epochs!r}")
    if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
        raise ConfigError(f"--sparsity-reg must be a finite number > 0, got {reg!r}")


def check_sparsity_model(model: nn.Module, criterion: str) -> None:
    """cap/bn penalise BatchNorm scales: a model without BatchNorm is refused before any work."""
    if criterion in BN_CRITERIA and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(f"--sparsity-epochs with --criterion {criterion} penalises BatchNorm scales, and the model "
                          "has no BatchNorm; pass --criterion l1 (its penalty is group lasso on the weights)")


def sparsity_regularizer(model: nn.Module, criterion: str, example_inputs: torch.Tensor,
                         reg: float) -> Callable[[nn.Module], None]:
    """`regularize(model)`: add the penalty's gradient for `criterion` to the model's .grad.

    The classifier (its outputs are the classes) and the SE bottlenecks pruning leaves alone are
    not penalised either."""
    ignored = [classifier_of(model)] + [squeeze_layer(se) for se in attention_blocks(model).values()]
    was_training = model.training
    model.eval()  # tracing runs a forward: BatchNorm statistics stay as they are
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        check_sparsity_model(model, criterion)
        if criterion in BN_CRITERIA:
            pruner = tp.pruner.BNScalePruner(model, example_inputs, importance=tp.importance.BNScaleImportance(),
                                             reg=reg, ignored_layers=ignored)
        else:
            pruner = tp.pruner.GroupNormPruner(model, example_inputs,
                                               importance=tp.importance.GroupMagnitudeImportance(p=2), reg=reg,
                                               ignored_layers=ignored)
    model.train(was_training)
    return pruner.regularize
