"""Training settings, checked where they are made; each message names the CLI flag at fault."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..defaults import TRAIN
from ..errors import ConfigError
from ..fields import MAX_BATCH, MAX_EPOCHS, MAX_LR, MAX_SEED, MAX_WEIGHT_DECAY, MAX_WORKERS, flag_value
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
        # flag_value refuses non-numbers, NaN, inf and huge integers with the same one-line
        # message the CLI gives at parse time (issue 10, class 7).
        flag_value("--epochs", self.epochs, 1, MAX_EPOCHS, integer=True)
        if type(self.batch_size) is int and self.batch_size < 2:  # BatchNorm cannot train on a batch of one
            raise ConfigError(f"--batch-size must be >= 2, got {self.batch_size}")
        flag_value("--batch-size", self.batch_size, 2, MAX_BATCH, integer=True)
        flag_value("--lr", self.lr, 0, MAX_LR, low_open=True)
        flag_value("--momentum", self.momentum, 0, 1, high_open=True)
        flag_value("--weight-decay", self.weight_decay, 0, MAX_WEIGHT_DECAY)
        flag_value("--label-smoothing", self.label_smoothing, 0, 1, high_open=True)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.select not in SELECT_RULES:
            raise ConfigError(f"--select must be one of {', '.join(SELECT_RULES)}, got {self.select!r}")
        if not all(type(m) in (int, float) and 0 < m < 1 for m in self.milestones):
            raise ConfigError(f"milestones must be fractions of the run in (0, 1), got {self.milestones}")
        flag_value("--seed", self.seed, 0, MAX_SEED, integer=True)
        flag_value("--workers", self.workers, 0, MAX_WORKERS, integer=True)
        if not isinstance(self.device, str):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")
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
