"""`eval` and `info` as library calls on a checkpoint."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import ModelMeta, load_checkpoint
from .data import check_classes, load_splits
from .errors import ConfigError
from .models import attention_blocks, layer_widths
from .models.complexity import count_macs_params

log = logging.getLogger(__name__)


@dataclass
class CheckpointEval:
    arch: str
    data: str
    split: str
    images: int
    accuracy: float
    classes: list[str]
    per_class_accuracy: list[float]
    per_class_images: list[int]
    confusion: list[list[int]]


@dataclass
class CheckpointInfo:
    arch: str
    classes: list[str]
    img_size: int
    mean: tuple
    std: tuple
    params: int
    macs: int
    attention_blocks: int
    widths: dict
    history: list[str]


def _train_record(meta: ModelMeta) -> dict:
    return next((h for h in meta.history if h.get("stage") == "train"), {})


def train_seed(meta: ModelMeta) -> int:
    """The seed of the training run, so eval/compress see the very same test split."""
    return _train_record(meta).get("seed", 0)


def split_settings(meta: ModelMeta) -> dict:
    """seed, test_frac, val_frac and max_per_class of the training run (defaults when unrecorded),
    and the split's fingerprint when recorded: load_splits refuses data that no longer gives that
    split. This dict is also the ONNX file's `rtdeploy.split`, so bench checks it the same way."""
    rec = _train_record(meta)
    out = {"seed": rec.get("seed", 0), "test_frac": rec.get("test_frac", 0.3), "val_frac": rec.get("val_frac", 0.0)}
    if rec.get("max_per_class") is not None:
        out["max_per_class"] = rec["max_per_class"]
    if meta.split_fingerprint is not None:
        out["fingerprint"] = meta.split_fingerprint
    return out


def splits_for(meta: ModelMeta, data: str | None, *, data_root=None, load=load_splits, **kwargs):
    """The checkpoint's own split of `data`: same seed, fractions, size and normalisation as in
    training, and (when the checkpoint records it) the very same files in each split."""
    # Imported weights were trained outside rtdeploy: there is no training split to check (the
    # import's own report says that accuracy is measured on rtdeploy's split of --data).
    if meta.split_fingerprint is None and _train_record(meta):
        log.warning("this checkpoint records no split fingerprint (saved by an older "
                    "rtdeploy), so it cannot be checked that --data still gives its training split")
    settings = {**split_settings(meta), **kwargs}
    splits = load(data, data_root=data_root, img_size=meta.img_size, mean=meta.mean, std=meta.std, **settings)
    check_classes(splits.classes, meta.classes)
    return splits


def evaluate_checkpoint(path: str | Path, data: str | None, *, data_root=None, split: str = "test",
                        load=load_splits) -> CheckpointEval:
    if split not in ("test", "val", "train"):
        raise ConfigError(f"--split must be test, val or train, got {split!r}")
    from .train import evaluate  # here, not at the top: export and bench use this module without training code

    model, meta = load_checkpoint(path)
    splits = splits_for(meta, data, data_root=data_root, load=load)
    ds = getattr(splits, split)
    if ds is None:
        raise ConfigError("--split val: this data has no validation split; use --split test")
    r = evaluate(model, ds)
    return CheckpointEval(meta.arch, splits.source, split, r.images, r.accuracy, meta.classes,
                          r.per_class_accuracy, [sum(row) for row in r.confusion], r.confusion)


def describe_checkpoint(path: str | Path) -> CheckpointInfo:
    model, meta = load_checkpoint(path)
    macs, params = count_macs_params(model, meta.img_size)
    history = [f"{h.get('stage')}: " + ", ".join(f"{k}={v}" for k, v in h.items()
                                                 if k in ("criterion", "ratio", "epochs", "best_accuracy", "data"))
               for h in meta.history]
    return CheckpointInfo(meta.arch, meta.classes, meta.img_size, meta.mean, meta.std, params, macs,
                          len(attention_blocks(model)), layer_widths(model), history)
