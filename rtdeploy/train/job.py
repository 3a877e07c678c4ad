"""`rtdeploy train` as a library call: data -> model -> fit -> checkpoint + JSON summary."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import distributed
from ..checkpoint import ModelMeta, read_checkpoint, resume_path, save_checkpoint
from ..env import versions
from ..errors import CheckpointError, ConfigError
from ..fsutil import write_json
from ..models import create_model
from ..models.complexity import count_macs_params
from .config import TrainConfig
from .losses import create_loss
from .loop import TrainReport, fit

log = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    """What `rtdeploy train` reports (and writes as JSON next to the checkpoint)."""

    stage: str
    arch: str
    data: str
    classes: int
    split: dict
    augment: bool
    crop_scale: float
    img_size: int
    seed: int
    config: dict
    params: int
    macs: int
    best_epoch: int
    best_accuracy: float
    final_accuracy: float
    eval_split: str
    seconds: float
    resumed_from_epoch: int
    checkpoint: str
    # {"world_size", "backend", "global_batch", "rank_digests", "rank_peak_rss_mb"}: how many
    # processes trained together (torchrun), the sha256 of the best model on each (equal by
    # construction) and each one's peak resident memory (Linux ru_maxrss).
    distributed: dict = field(default_factory=dict)
    versions: dict = field(default_factory=versions)
    epochs: list[dict] = field(default_factory=list)


def summary_path(out: str | Path) -> Path:
    return Path(out).with_suffix(".json")


def run_training(splits, arch: str, cfg: TrainConfig, out: str | Path, *, loss: str = "ce",
                 resume: str | Path | None = None, on_step=None, on_epoch=None) -> TrainSummary:
    torch.manual_seed(cfg.seed)  # the same seed gives the same initial weights
    model = create_model(arch, len(splits.classes))
    meta = ModelMeta(arch=arch, classes=list(splits.classes), img_size=splits.img_size,
                     mean=tuple(splits.mean), std=tuple(splits.std))
    state = _load_resume(resume, meta, cfg) if resume else None
    last = resume_path(out)

    def save(best, resume_state, report: TrainReport):
        # Best first: whenever '<out>.last' exists, so does a loadable '<out>'.
        meta.history = [_history(arch, splits, cfg, report)]
        save_checkpoint(out, best, meta)
        save_checkpoint(last, model, meta, state=resume_state)

    best, report = fit(model, splits.train, splits.eval_split, create_loss(loss, label_smoothing=cfg.label_smoothing), cfg,
                       on_step=on_step, on_epoch=on_epoch, save=save, resume=state)
    macs, params = count_macs_params(best, splits.img_size)
    summary = TrainSummary(
        stage="train", arch=arch, data=splits.source, classes=len(splits.classes),
        split=_split_sizes(splits), augment=splits.train.augment, crop_scale=splits.train.crop_scale, img_size=splits.img_size, seed=cfg.seed, config=asdict(cfg),
        params=params, macs=macs, best_epoch=report.best_epoch, best_accuracy=report.best_accuracy,
        final_accuracy=report.final_accuracy, eval_split="val" if splits.val is not None else "test",
        seconds=report.seconds, resumed_from_epoch=report.resumed_from_epoch, checkpoint=str(out),
        epochs=[asdict(e) for e in report.epochs],
        distributed={"world_size": report.world_size, "backend": report.backend,
                     "global_batch": cfg.batch_size, "rank_digests": report.rank_digests,
                     "rank_peak_rss_mb": report.rank_peak_rss_mb})
    if distributed.info().is_main:  # one writer: rank 0 (the others hold the same model)
        write_json(summary_path(out), asdict(summary))
    return summary


def _split_sizes(splits) -> dict:
    return {"train": len(splits.train), "val": len(splits.val) if splits.val is not None else 0,
            "test": len(splits.test)}


def _history(arch, splits, cfg, report: TrainReport) -> dict:
    return {"stage": "train", "arch": arch, "data": splits.source, "seed": cfg.seed,
            "augment": splits.train.augment, "crop_scale": splits.train.crop_scale, "test_frac": splits.test_frac, "val_frac": splits.val_frac, "max_per_class": splits.max_per_class,
            "epochs": len(report.epochs), "best_epoch": report.best_epoch,
            "best_accuracy": report.best_accuracy, "split": _split_sizes(splits), "versions": versions()}


def _load_resume(path: str | Path, meta: ModelMeta, cfg: TrainConfig) -> dict:
    path = Path(path)
    if not path.name.endswith(".last") and resume_path(path).exists():
        path = resume_path(path)  # accept the best checkpoint's name too
    saved_meta, _, state = read_checkpoint(path)
    if not state or "optimizer" not in state:
        raise CheckpointError(f"--resume {path} holds no training state; pass the '<out>.last' file a run left behind")
    if saved_meta.arch != meta.arch or saved_meta.classes != meta.classes:
        raise CheckpointError(f"--resume {path} is a {saved_meta.arch} run on other data/classes; "
                              f"resume with the same --arch and --data")
    if state["epoch"] >= cfg.epochs:
        raise ConfigError(f"--resume {path} already finished {state['epoch']} epochs; raise --epochs to train further")
    return state
