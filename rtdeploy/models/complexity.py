"""Params and MACs, counted by torch-pruning's op counter (not a hand-written one)."""
from __future__ import annotations

import torch
from torch import nn


def count_macs_params(model: nn.Module, img_size: int) -> tuple[int, int]:
    """(MACs, params) for one 3 x img_size x img_size image."""
    # Imported here, not at the top: torch-pruning imports timm when it is installed, and timm
    # imports torchvision and torch._dynamo (~4 s together). Commands that refuse bad input before
    # counting anything (info, eval, train, import) then answer in the time torch takes to load.
    import torch_pruning as tp

    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, img_size, img_size, device=device))
    finally:
        model.train(was_training)
    return int(macs), int(params)
