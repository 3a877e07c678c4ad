"""Accuracy, per-class accuracy and the confusion matrix of a model on a split."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data import make_loader


@dataclass
class EvalResult:
    accuracy: float
    images: int
    per_class_accuracy: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class


@torch.no_grad()
def predict(model: nn.Module, ds, batch_size: int = 128, device: torch.device | str = "cpu"):
    """(logits [N, C], labels [N]) over the whole split, in split order."""
    model.eval().to(device)
    outs, labels = [], []
    for x, y in make_loader(ds, batch_size, shuffle=False):
        outs.append(model(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def evaluate(model: nn.Module, ds, batch_size: int = 128, device: torch.device | str = "cpu") -> EvalResult:
    logits, labels = predict(model, ds, batch_size, device)
    return summarize(logits.argmax(1), labels, logits.shape[1])


def summarize(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> EvalResult:
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    conf.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = (conf.diag().float() / conf.sum(1).clamp(min=1)).tolist()
    acc = (pred == labels).float().mean().item() if labels.numel() else 0.0
    return EvalResult(acc, labels.numel(), per_class, conf.tolist())
