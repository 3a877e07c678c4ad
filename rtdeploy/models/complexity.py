"""Params and MACs, counted by torch-pruning's op counter (not a hand-written one)."""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn


def count_macs_params(model: nn.Module, img_size: int) -> tuple[int, int]:
    """(MACs, params) for one 3 x img_size x img_size image."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, img_size, img_size, device=device))
    finally:
        model.train(was_training)
    return int(macs), int(params)
