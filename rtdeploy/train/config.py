"""Training settings, checked where they are made; each message names the CLI flag at fault."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..defaults import TRAIN
from ..errors import ConfigError
from .selection import SELECT_RULES

SCHEDULES = ("cosine", "step", "onecycle", "constant")


@dataclass
class TrainConfig:
    """Optimisation settings. The defaults are recipe "default" of rtdeploy/defaults.py (justified
    there), the same object the CLI reads its defaults from."""

    epochs: int = TRAIN.epochs
    batch_size: int = TRAIN.batch_size
    lr: float = TRAIN.lr
    momentum: float = TRAIN.momentum
    weight_decay: float = TRAIN.weight_decay
    label_smoothing: float = TRAIN.label_smoothing  # on the cross-entropy term (of `ce`, and of `aml`)
    # "step" decays x0.1 at these fractions of the run: the paper's 80 and 120 of 160 epochs.
    schedule: str = TRAIN.schedule
    milestones: tuple[float, ...] = (0.5, 0.75)
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    select: str = TRAIN.select  # which epoch to keep: val, test (the paper's protocol) or last; see selection.py

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:  # BatchNorm cannot train on a batch of one
            raise ConfigError(f"--batch-size must be >= 2, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.select not in SELECT_RULES:
            raise ConfigError(f"--select must be one of {', '.join(SELECT_RULES)}, got {self.select!r}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        resolve_device(self.device)


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is available here; use --device cpu (or auto)")
        return torch.device(device)
    raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
