"""Can this architecture be pruned at all? Answered before any work, by pruning a copy.

torch-pruning handles most CNNs, but some graphs defeat its dependency analysis (a channel
shuffle's reshape made it divide by zero deep inside pruning, issue 12) or prune into a model
that no longer runs. Rather than keep a list of names that goes stale with every torchvision
release, `check_prunable` prunes a throw-away copy the way compress will (SE folded with a
constant scale when it folds, random ranking, the requested ratio) and turns any failure into a
one-line refusal that says why, before data is decoded or a model trained.
"""
from __future__ import annotations

import copy
import traceback

import torch
from torch import nn

from ..errors import ConfigError, UserInputError
from ..models.layers import attention_blocks
from .fold import FoldError, fold_attention, fold_plan
from .pruner import PruneConfig, prune_model

# Where torch-pruning fails -> what in the architecture it could not handle.
_KNOWN = {
    "update_reshape_index_mapping": "a reshape that regroups channels (channel shuffle) that torch-pruning cannot map",
    "update_flatten_index_mapping": "a flatten whose channel mapping torch-pruning cannot follow",
    "_verify": "pruning leaves a model whose forward pass or output shape breaks",
}


class UnprunableError(UserInputError):
    """This architecture cannot be pruned by rtdeploy (exit 2); the message says why."""


def _why(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    where = next((f.name for f in reversed(frames) if f.name in _KNOWN), frames[-1].name if frames else "?")
    first = (str(e).splitlines() or [""])[0][:160]
    what = _KNOWN.get(where, "torch-pruning cannot prune its graph")
    return f"{what} ({type(e).__name__} in {where}{': ' + first if first else ''})"


def _fold_constant(model: nn.Module, img_size: int) -> None:
    """Fold SE blocks with s_bar = 0.5 when they fold: compress prunes the folded model."""
    try:
        fold_plan(model)
    except FoldError:
        return  # compress keeps these SE blocks and prunes through them; so does the dry run
    means = {name: torch.full((_channels(se),), 0.5) for name, se in attention_blocks(model).items()}
    fold_attention(model, means, torch.zeros(2, 3, img_size, img_size))


def _channels(se: nn.Module) -> int:
    from ..models.se_kinds import squeeze_layer

    layer = squeeze_layer(se)
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _attention_layer(model: nn.Module) -> str | None:
    """The first transformer attention module (not SE): its heads and token embeddings are not
    channels of a conv; pruning them needs a head-aware setup this pipeline does not make."""
    from ..models.se_kinds import is_attention_block

    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) or ("Attention" in type(m).__name__ and not is_attention_block(m)):
            return f"{type(m).__name__} '{name}'"
    return None


def check_prunable(model: nn.Module, cfg: PruneConfig, img_size: int, arch: str = "this model") -> None:
    """UnprunableError when pruning a copy of `model` as `cfg` asks fails; the model is untouched.

    A --target-macs run is probed at ratio 0.5 (the search tries many ratios later)."""
    layer = _attention_layer(model)
    if layer is not None:  # checked by structure: torch-pruning may run for minutes on these first
        raise UnprunableError(f"{arch} cannot be pruned: it has transformer attention ({layer}), whose heads and "
                              "token embeddings rtdeploy's channel pruning does not handle; choose a convolutional "
                              "architecture (e.g. tv/mobilenet_v2, tv/resnet18) or deploy it unpruned with 'rtdeploy export'")
    trial = copy.deepcopy(model).cpu().eval()
    probe = PruneConfig(ratio=cfg.ratio if cfg.target_macs is None else 0.5, scope=cfg.scope, round_to=cfg.round_to)
    try:
        _fold_constant(trial, img_size)
        prune_model(trial, "random", torch.zeros(1, 3, img_size, img_size), probe)
    except ConfigError:
        raise  # the user's settings (e.g. a ratio that empties a layer): already says which flag
    except Exception as e:  # noqa: BLE001 - any failure inside torch-pruning means: not prunable
        raise UnprunableError(f"{arch} cannot be pruned: {_why(e)}; choose another architecture "
                              "(e.g. tv/mobilenet_v2, tv/resnet18) or deploy it unpruned with 'rtdeploy export'") from e
