"""Capture the mean SE attention per channel: s_bar[c] = mean over images of s(x)[c].

This is the first step of Channel Attention Pruning (RemoteTrimmer, Zou, Yao et al. 2024,
arXiv 2412.12603): the mean attention is folded into the preceding BatchNorm (prune/fold.py),
so that |gamma'| = s_bar * |gamma| ranks channels in the attention space.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .errors import ConfigError
from .models import attention_blocks
from .models.se_kinds import gate_of

Batches = torch.Tensor | Iterable


def _batches(source: Batches, batch_size: int = 64) -> Iterable[torch.Tensor]:
    """Image batches from a tensor [N,3,H,W] or an iterable of tensors / (images, labels) pairs."""
    if isinstance(source, torch.Tensor):
        batches = source.split(batch_size) if source.dim() else [source]
    else:
        batches = (batch[0] if isinstance(batch, (tuple, list)) and batch else batch for batch in source)
    for x in batches:
        yield _checked_batch(x)


def _checked_batch(x) -> torch.Tensor:
    """A float32 [N,3,H,W] batch: anything else (a folder name, labels first, uint8 pixels, one
    image without its batch dimension) would fail inside the model as a bare torch error."""
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3 and x.dtype == torch.float32):
        got = f"a {str(x.dtype).removeprefix('torch.')} tensor {list(x.shape)}" if isinstance(x, torch.Tensor) \
            else f"a {type(x).__name__}"
        raise ConfigError(f"calibration images must be float32 tensors [N, 3, H, W] (or (images, labels) "
                          f"batches of them), got {got}")
    return x


def _count(source: Batches, max_images: int | None) -> int | None:
    """How many images the capture will see, when it can be known up front (for progress)."""
    dataset = source if isinstance(source, torch.Tensor) else getattr(source, "dataset", None)
    n = len(dataset) if hasattr(dataset, "__len__") else None
    if n is None:
        return max_images
    return n if max_images is None else min(n, max_images)


class _MeanRecorder:
    """Forward hook on an SE block's gate (sigmoid, hardsigmoid): accumulates the per-channel sum of s(x) [N, C]."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def __call__(self, module, inputs, output: torch.Tensor) -> None:
        s = output.detach().double().flatten(2).mean(2) if output.ndim > 2 else output.detach().double()
        self.total = s.sum(0) if self.total is None else self.total + s.sum(0)
        self.count += s.shape[0]

    def mean(self) -> torch.Tensor:
        return (self.total / self.count).float().cpu()


@torch.no_grad()
def capture_attention(model: nn.Module, images_or_loader: Batches, max_images: int | None = None,
                      on_progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """{SE block name: s_bar [C]} averaged over up to `max_images` calibration images.

    Runs in eval mode (BatchNorm uses its running statistics, as at deployment) and restores
    the model's mode afterwards. `on_progress(done, total)` reports images seen; total is
    the number of images to be seen when known, else the number seen so far.
    """
    if max_images is not None and max_images < 1:
        raise ConfigError(f"--calib-images must be >= 1, got {max_images}")
    blocks = attention_blocks(model)
    if not blocks:
        return {}
    recorders = {name: _MeanRecorder() for name in blocks}
    handles = [gate_of(blocks[name]).register_forward_hook(rec) for name, rec in recorders.items()]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seen, total = 0, _count(images_or_loader, max_images)
    try:
        for x in _batches(images_or_loader):
            if max_images is not None:
                x = x[: max_images - seen]
            if len(x) == 0:
                break
            model(x.to(device))
            seen += len(x)
            if on_progress is not None:
                on_progress(seen, max(total or 0, seen))
            if max_images is not None and seen >= max_images:
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ConfigError("no calibration images: the calibration split is empty; check --data")
    return {name: rec.mean() for name, rec in recorders.items()}
