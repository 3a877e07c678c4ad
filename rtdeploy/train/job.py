"""`rtdeploy train` as a library call: data -> model -> fit -> checkpoint + JSON summary."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .. import distributed
from ..checkpoint import ModelMeta, build_model, read_checkpoint, resume_path, save_checkpoint
from ..env import versions
from ..errors import CheckpointError, ConfigError
from ..fields import MAX_EPOCHS, FieldError, dict_of, integer, known_keys, list_of_dicts, number
from ..names import show
from ..fsutil import write_json
from ..models import create_model
from ..models.complexity import count_macs_params
from .config import TrainConfig, resolve_device
from .losses import create_loss
from .loop import EpochStats, TrainReport, fit, split_accuracy
from .selection import selection_split

log = logging.getLogger(__name__)
_EPOCH_FIELDS = tuple(EpochStats.__dataclass_fields__)


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
    best_epoch: int  # the epoch kept (see train/selection.py)
    best_accuracy: float  # its accuracy on the selection split
    final_accuracy: float  # the last epoch's accuracy on the selection split
    eval_split: str  # the selection split: val, or test under the paper's protocol
    selected_on: str
    test_accuracy: float  # the kept model on the test split, measured once at the end
    seconds: float
    resumed_from_epoch: int
    checkpoint: str
    # {"world_size", "backend", "global_batch", "rank_digests", "rank_peak_rss_mb"}: how many
    # processes trained together (torchrun), the sha256 of the best model on each (equal by
    # construction) and each one's peak resident memory (Linux VmHWM: env.peak_rss_mb).
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
                     mean=tuple(splits.mean), std=tuple(splits.std), split_fingerprint=splits.fingerprint or None)
    state = _load_resume(resume, meta, cfg) if resume else None
    last = resume_path(out)

    def save(best, resume_state, report: TrainReport):
        # Best first: whenever '<out>.last' exists, so does a loadable '<out>'.
        meta.history = [_history(arch, splits, cfg, report)]
        save_checkpoint(out, best, meta)
        save_checkpoint(last, model, meta, state=resume_state)

    eval_ds, rule, selected_on = selection_split(splits, cfg.select)
    best, report = fit(model, splits.train, eval_ds, create_loss(loss, label_smoothing=cfg.label_smoothing),
                       replace(cfg, select=rule), on_step=on_step, on_epoch=on_epoch, save=save, resume=state)
    test_accuracy = split_accuracy(best, splits.test, cfg.batch_size, resolve_device(cfg.device))
    # The checkpoint carries the kept model's selection-split and test accuracy (written last,
    # so an interrupted run's checkpoint never claims a test number). Rank 0 alone writes.
    if distributed.info().is_main:
        meta.history[-1].update(selected_on=selected_on, test_accuracy=test_accuracy,
                                val_accuracy=report.best_accuracy if eval_ds is splits.val else None)
        save_checkpoint(out, best, meta)
    macs, params = count_macs_params(best, splits.img_size)
    summary = TrainSummary(
        stage="train", arch=arch, data=splits.source, classes=len(splits.classes),
        split=_split_sizes(splits), augment=splits.train.augment, crop_scale=splits.train.crop_scale, img_size=splits.img_size, seed=cfg.seed, config=asdict(cfg),
        params=params, macs=macs, best_epoch=report.best_epoch, best_accuracy=report.best_accuracy,
        final_accuracy=report.final_accuracy, eval_split="test" if eval_ds is splits.test else "val",
        selected_on=selected_on, test_accuracy=test_accuracy,
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
            "epochs": len(report.epochs), "best_epoch": report.best_epoch, "select": report.selection,
            "best_accuracy": report.best_accuracy, "split": _split_sizes(splits), "versions": versions()}


def resume_file(path: str | Path) -> Path:
    """--resume may name the '<out>.last' file or the best checkpoint beside it."""
    path = Path(path)
    if not path.name.endswith(".last") and resume_path(path).exists():
        path = resume_path(path)
    return path


def check_resume(path: str | Path, arch: str, cfg: TrainConfig, img_size: int | None = None) -> tuple[ModelMeta, dict]:
    """Everything about --resume that needs no data, so `train` checks it before decoding images:
    the file loads, holds a valid training state of this --arch (and --img-size), epochs are left."""
    path = resume_file(path)
    saved_meta, _, state = read_checkpoint(path)
    if not state or "optimizer" not in state:
        raise CheckpointError(f"--resume {show(path)} holds no training state; pass the '<out>.last' file a run left behind")
    check_train_state(state, path, build_model(saved_meta, path))
    if saved_meta.arch != arch or (img_size is not None and saved_meta.img_size != img_size):
        raise CheckpointError(f"--resume {show(path)} is a {saved_meta.arch} run at {saved_meta.img_size}px; "
                              f"resume with the same --arch, --img-size and --data")
    if state["epoch"] >= cfg.epochs:
        raise ConfigError(f"--resume {show(path)} already finished {state['epoch']} epochs (--epochs {cfg.epochs}); "
                          f"nothing is left to resume: use its checkpoint, or start a new run without --resume")
    return saved_meta, state


def _load_resume(path: str | Path, meta: ModelMeta, cfg: TrainConfig) -> dict:
    saved_meta, state = check_resume(path, meta.arch, cfg, meta.img_size)
    if saved_meta.classes != meta.classes:
        raise CheckpointError(f"--resume {show(resume_file(path))} is a {saved_meta.arch} run on other data/classes; "
                              f"resume with the same --arch and --data")
    return state


def check_train_state(state: dict, path: Path, model: torch.nn.Module) -> None:
    """The training state fit() resumes from (see loop._resume_state), checked field by field
    against `model` (rebuilt from the same file), so a damaged '.last' is a one-line error."""
    try:
        _check_state_fields(state, model)
    except FieldError as e:
        raise CheckpointError(f"--resume {show(path)} has a damaged training state: {e}; "
                              f"resume from an intact '<out>.last' or start again without --resume") from e


def _check_state_fields(state: dict, model: torch.nn.Module) -> None:
    known_keys(state, "state", ("epoch", "model", "optimizer", "scheduler", "best_state", "report"))
    integer(state.get("epoch"), "state.epoch", 1, MAX_EPOCHS)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key in ("model", "best_state"):
        weights = dict_of(state.get(key), f"state.{key}")
        if {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()} != shapes \
                or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise FieldError(f"state.{key}", "the weights of the checkpoint's own architecture", "other tensors")
    _check_optimizer(dict_of(state.get("optimizer"), "state.optimizer"), [p.shape for p in model.parameters()])
    _check_scheduler(dict_of(state.get("scheduler"), "state.scheduler"))
    report = dict_of(state.get("report"), "state.report")
    known_keys(report, "state.report", ("epochs", "best_epoch", "best_accuracy", "seconds", "peak_epoch",
                                        "peak_accuracy"))
    epochs = list_of_dicts(report.get("epochs"), "state.report.epochs")
    for entry in epochs:
        known_keys(entry, "state.report.epochs entry", _EPOCH_FIELDS)
        for k, value in entry.items():
            if value is not None:
                number(value, f"state.report.epochs entry {k}", -1e12, 1e12)
    integer(report.get("best_epoch"), "state.report.best_epoch", 0, state["epoch"])
    number(report.get("best_accuracy"), "state.report.best_accuracy", 0, 1)
    if "peak_epoch" in report:  # written since the validation-selection rule (train/selection.py)
        integer(report.get("peak_epoch"), "state.report.peak_epoch", 0, state["epoch"])
        number(report.get("peak_accuracy"), "state.report.peak_accuracy", 0, 1)
    number(report.get("seconds"), "state.report.seconds", 0, 1e12)


def _check_optimizer(opt: dict, param_shapes: list) -> None:
    """SGD's state: one group list covering every parameter once, momentum buffers shaped like them."""
    groups = list_of_dicts(opt.get("param_groups"), "state.optimizer.param_groups")
    ids = [i for g in groups for i in (g.get("params") if isinstance(g.get("params"), list) else [None])]
    for g in groups:
        for k in ("lr", "initial_lr", "momentum", "weight_decay", "dampening"):
            if k in g:
                number(g[k], f"state.optimizer.param_groups {k}", 0, 1e6)
    if not all(type(i) is int for i in ids) or sorted(ids) != list(range(len(param_shapes))):
        raise FieldError("state.optimizer.param_groups", f"groups covering the {len(param_shapes)} parameters",
                         f"{len(ids)} parameter ids")
    per_param = opt.get("state")
    if not isinstance(per_param, dict):
        raise FieldError("state.optimizer.state", "a mapping of parameter ids", per_param)
    for key, entry in per_param.items():
        if type(key) is not int or not 0 <= key < len(param_shapes) or not isinstance(entry, dict):
            raise FieldError("state.optimizer.state", "per-parameter entries", key)
        buf = entry.get("momentum_buffer")
        if buf is not None and (not isinstance(buf, torch.Tensor) or buf.shape != param_shapes[key]):
            raise FieldError("state.optimizer.state momentum_buffer", "shaped like its parameter",
                             list(getattr(buf, "shape", [])))


def _check_scheduler(sched: dict) -> None:
    integer(sched.get("last_epoch"), "state.scheduler.last_epoch", -1, 10**12)
    for k in ("base_lrs", "_last_lr"):
        if k in sched:
            values = sched[k] if isinstance(sched[k], list) else [None]
            for v in values:
                number(v, f"state.scheduler.{k} entry", 0, 1e6)
