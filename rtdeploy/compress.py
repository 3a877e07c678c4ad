"""`rtdeploy compress` as a library call: RemoteTrimmer's pipeline on a trained checkpoint.

checkpoint -> evaluate -> capture SE attention -> fold into BN + strip SE -> [sparsity training]
-> prune (criterion) -> fine-tune (AML or CE, optional distillation) -> pruned checkpoint + JSON report.
Each stage is timed, reported, and checked (fold parity, pruned shapes, exact reload).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import distributed
from .attention import capture_attention
from .checkpoint import ModelMeta, load_checkpoint, read_checkpoint, resume_path, save_checkpoint
from .data import check_classes, make_loader
from .defaults import COMPRESS, CompressRecipe
from .env import versions
from .errors import CheckpointError, ConfigError, PipelineError
from .fsutil import write_json
from .models import has_attention
from .names import show
from .models.complexity import count_macs_params
from .prune.support import check_prunable
from .prune import (FoldError, FoldReport, PruneConfig, PruneReport, check_criterion, check_model_for, check_ratio,
                    check_sparsity, check_sparsity_model, clear_attention_marks, fold_attention, fold_plan, prune_model, regularizer_name,
                    sparsity_regularizer)
from .train import Distilled, TrainConfig, create_loss, fit, resolve_device
from .train.loop import split_accuracy
from .train.losses import LOSSES
from .train.selection import selection_split

log = logging.getLogger(__name__)


def finetune_defaults(recipe: CompressRecipe = COMPRESS, prune: PruneConfig | None = None) -> TrainConfig:
    """The fine-tuning settings of a compress recipe (rtdeploy/defaults.py says why these), their
    length for `prune`'s ratio (the ratio-0.7 length when a MACs/latency target sets the ratio)."""
    searched = prune is not None and (prune.target_macs is not None or prune.target_latency is not None)
    ratio = prune.ratio if prune is not None and not searched else None
    return TrainConfig(epochs=recipe.epochs_for(ratio), batch_size=recipe.batch_size, lr=recipe.lr, momentum=recipe.momentum,
                       weight_decay=recipe.weight_decay, label_smoothing=recipe.label_smoothing,
                       schedule=recipe.schedule, select=recipe.select)


@dataclass
class CompressConfig:
    criterion: str = COMPRESS.criterion  # "auto": cap for a model with foldable SE blocks, else l1
    prune: PruneConfig = field(default_factory=PruneConfig)
    loss: str = COMPRESS.loss
    r1: float = COMPRESS.r1
    r2: float = COMPRESS.r2
    # None: the recipe's fine-tuning, its length for prune.ratio, fixed at construction:
    # dataclasses.replace(cfg, prune=...) keeps the old length unless it also passes train=None.
    train: TrainConfig | None = None
    distill: bool = COMPRESS.distill  # beyond the paper: knowledge distillation from the unpruned model
    kd_temperature: float = COMPRESS.kd_temperature
    kd_weight: float = COMPRESS.kd_weight
    calib_images: int = COMPRESS.calib_images
    sparsity_epochs: int = COMPRESS.sparsity_epochs  # 0: no sparsity training before pruning
    sparsity_reg: float = COMPRESS.sparsity_reg
    step_epochs: int = COMPRESS.step_epochs  # with prune.steps > 1: fine-tuning epochs after each step but the last

    def __post_init__(self):
        if self.train is None:
            self.train = finetune_defaults(COMPRESS, self.prune)
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        self.loss_fn()  # --r1/--r2/--kd-* are checked where the losses are built
        if self.calib_images < 1:
            raise ConfigError(f"--calib-images must be >= 1, got {self.calib_images}")
        check_sparsity(self.sparsity_epochs, self.sparsity_reg)
        if isinstance(self.step_epochs, bool) or not isinstance(self.step_epochs, int) or self.step_epochs < 1:
            raise ConfigError(f"--step-epochs must be an integer >= 1, got {self.step_epochs!r}")
        if self.criterion != AUTO_CRITERION:
            check_criterion(self.criterion)

    def loss_fn(self) -> nn.Module:
        base = self.base_loss()
        return Distilled(base, self.kd_temperature, self.kd_weight) if self.distill else base

    def base_loss(self) -> nn.Module:
        """The fine-tuning loss without distillation (the training stages before the final one)."""
        return create_loss(self.loss, r1=self.r1, r2=self.r2, label_smoothing=self.train.label_smoothing)


AUTO_CRITERION = "auto"


def auto_criterion(model: nn.Module) -> str:
    """`--criterion auto`: RemoteTrimmer's cap where the model has SE blocks it can fold, else l1
    (measured within noise of the best baseline on UC Merced, and defined for every conv net)."""
    if not has_attention(model):
        return "l1"
    try:
        fold_plan(model)
    except FoldError:
        return "l1"
    return "cap"


@dataclass
class StageEvent:
    """A stage starting (seconds None) or finished (seconds, detail set): for progress display."""

    name: str
    label: str
    seconds: float | None = None
    detail: str = ""


@dataclass
class CompressReport:
    criterion: str
    ratio: float
    params: dict  # {"before": int, "after": int}
    macs: dict  # {"before": int, "after": int}
    accuracy: dict  # {"original", "folded" (None without SE), ["sparsified",] "pruned", "finetuned"}: fractions
    seconds: dict  # {stage: seconds}
    seed: int
    arch: str
    data: str
    img_size: int
    eval_split: str  # the split of every accuracy in `accuracy` and `stages`: always test
    selected_on: str  # what chose the kept fine-tuning epoch (validation, last epoch, or test)
    source: str
    checkpoint: str
    stages: list[dict]  # rows original/folded/pruned/finetuned: params, macs, accuracy
    fold: dict | None
    prune: dict
    finetune: dict
    settings: dict
    sparsity: dict | None = None  # --sparsity-epochs: {"epochs", "reg", "regularizer", "last_epoch_eval", ...}
    distributed: dict = field(default_factory=dict)  # {"world_size", "backend", "rank_digests"} (torchrun)
    versions: dict = field(default_factory=versions)


class _Stages:
    """Times each stage and tells the caller when one starts and ends."""

    def __init__(self, on_stage: Callable[[StageEvent], None] | None):
        self.on_stage, self.seconds = on_stage, {}

    @contextlib.contextmanager
    def run(self, name: str, label: str):
        event = StageEvent(name, label)
        if self.on_stage:
            self.on_stage(event)
        t0 = time.perf_counter()
        yield event
        event.seconds = self.seconds[name] = time.perf_counter() - t0
        if self.on_stage:
            self.on_stage(event)


def preflight(ckpt_path: str | Path, cfg: CompressConfig) -> tuple[nn.Module, ModelMeta]:
    """Load the checkpoint and run every check that needs no data: criterion vs. model, the SE
    blocks foldable (for cap), the ratio not emptying a layer. Cheap; call before decoding data."""
    model, meta = load_checkpoint(ckpt_path)
    if cfg.criterion == AUTO_CRITERION:
        cfg.criterion = auto_criterion(model)  # resolved once, so the report and --resume see it
        log.info("--criterion auto: %s", cfg.criterion)
    check_model_for(cfg.criterion, model)
    if cfg.criterion == "cap":
        fold_plan(model)  # FoldError names the SE block without a BatchNorm before it
    check_ratio(model, cfg.prune)
    if cfg.sparsity_epochs:
        check_sparsity_model(model, cfg.criterion)
    check_prunable(model, cfg.prune, meta.img_size, meta.arch)  # UnprunableError says why, before any work
    return model, meta


def planned_stages(model: nn.Module, cfg: CompressConfig) -> list[str]:
    """The stage names compress will run for this (preflighted) model, in order."""
    folds = has_attention(model) and _fold_or_keep(model, cfg) is None
    fold = ["capture", "fold", "evaluate_folded"] if folds else []
    sparsify = ["sparsify", "evaluate_sparsified"] if cfg.sparsity_epochs else []
    return ["evaluate_original", *fold, *sparsify, "prune", "evaluate_pruned", "finetune", "evaluate_finetuned", "save"]


def _fold_or_keep(model: nn.Module, cfg: CompressConfig) -> str | None:
    """Why the SE blocks must stay in the model (None: they can be folded). Only a non-cap
    criterion gets this far with unfoldable SE blocks: torch-pruning then prunes through them."""
    try:
        fold_plan(model)
    except FoldError as e:
        if cfg.criterion == "cap":
            raise
        return str(e)
    return None


def _history(cfg: CompressConfig, prune_ratio: float, accuracy: dict, row: dict, source: str) -> dict:
    return {"stage": "compress", "criterion": cfg.criterion, "ratio": prune_ratio, "scope": cfg.prune.scope,
            "round_to": cfg.prune.round_to, "target_macs": cfg.prune.target_macs, "loss": cfg.loss,
            "distill": cfg.distill, "epochs": cfg.train.epochs, "sparsity_epochs": cfg.sparsity_epochs,
            "prune_steps": cfg.prune.steps,
            "seed": cfg.train.seed, "data": source,
            "accuracy": accuracy, "macs": row["macs"], "params": row["params"], "versions": versions()}


def _save_and_verify(out: Path, model: nn.Module, meta: ModelMeta, probe: torch.Tensor) -> None:
    """Write the checkpoint, reload it, and demand identical outputs (else remove it)."""
    save_checkpoint(out, model, meta)
    reloaded, _ = load_checkpoint(out)
    model.eval()
    with torch.no_grad():
        same = torch.equal(model.cpu()(probe.cpu()), reloaded(probe.cpu()))
    if not same:
        out.unlink(missing_ok=True)
        raise PipelineError(f"the pruned checkpoint does not reload to the same outputs; {out} was not kept")


@dataclass
class _Run:
    """State shared by the stages of one compress run."""

    cfg: CompressConfig
    splits: object
    device: torch.device
    stages: _Stages
    rows: list[dict] = field(default_factory=list)
    accuracy: dict = field(default_factory=lambda: dict.fromkeys(("original", "folded", "pruned", "finetuned")))
    selected_on: str = ""

    def calib(self, batch_size: int | None = None):
        """Shuffled train batches (calibration must see every class, and the split is class-sorted)."""
        return make_loader(self.splits.train, batch_size or self.cfg.train.batch_size, shuffle=True,
                           seed=self.cfg.train.seed)

    def measure(self, stage: str, model: nn.Module) -> None:
        """Accuracy on the test split, params and MACs of `model` after `stage`."""
        with self.stages.run(f"evaluate_{stage}", f"evaluate the {stage} model") as ev:
            acc = self.accuracy[stage] = split_accuracy(model, self.splits.test, 128, self.device)
            macs, params = count_macs_params(model, self.splits.img_size)
            self.rows.append({"stage": stage, "params": params, "macs": macs, "accuracy": acc})
            ev.detail = f"accuracy {100 * acc:.2f} %"


def _capture_and_fold(run: _Run, model: nn.Module, on_progress) -> FoldReport:
    with run.stages.run("capture", "capture SE attention") as ev:
        means = capture_attention(model, run.calib(), run.cfg.calib_images, on_progress)
        ev.detail = f"{len(means)} SE blocks, {min(run.cfg.calib_images, len(run.splits.train))} images"
    with run.stages.run("fold", "fold attention into BatchNorm, strip SE") as ev:
        report = fold_attention(model, means, next(iter(run.calib(16)))[0])
        ev.detail = f"max |diff| {report.max_abs_diff:.1e}"
    return report


def _sparsify(run: _Run, model: nn.Module, on_epoch) -> dict:
    """Train `model` in place for --sparsity-epochs with the criterion's sparsity penalty (see
    prune/sparsity.py), with the fine-tuning settings; the last epoch is what gets pruned."""
    cfg, size = run.cfg, run.splits.img_size
    name = regularizer_name(cfg.criterion)
    eval_ds, _, _ = selection_split(run.splits, "last")  # nothing is selected: evaluated for the report
    evaluated_on = "validation split" if run.splits.val is not None else "test split"
    with run.stages.run("sparsify", f"sparsity training, {cfg.sparsity_epochs} epochs ({name})") as ev:
        example = torch.zeros(1, 3, size, size, device=run.device)
        regularize = sparsity_regularizer(model.to(run.device), cfg.criterion, example, cfg.sparsity_reg)
        loss = cfg.base_loss()
        # select "last": fit trains `model` itself and returns a copy of its last state
        _, tr = fit(model, run.splits.train, eval_ds, loss, replace(cfg.train, epochs=cfg.sparsity_epochs, select="last"),
                    on_epoch=on_epoch, regularize=regularize)
        ev.detail = f"last epoch {100 * tr.final_accuracy:.2f} % on the {evaluated_on}"
    return {"epochs": cfg.sparsity_epochs, "reg": cfg.sparsity_reg, "regularizer": name,
            "last_epoch_eval": tr.final_accuracy, "evaluated_on": evaluated_on, "seconds": tr.seconds,
            "bn_scale_l1": _bn_scale_l1(model)}


def _bn_scale_l1(model: nn.Module) -> float | None:
    """Mean |gamma| over all BatchNorm channels: what network slimming's penalty pushes down."""
    scales = [m.weight.detach().abs().flatten() for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    return torch.cat(scales).mean().item() if scales else None


def _prune(run: _Run, model: nn.Module, on_stage_epoch=None) -> PruneReport:
    cfg, size = run.cfg, run.splits.img_size
    steps = f", {cfg.prune.steps} steps with {cfg.step_epochs} fine-tuning epochs between" if cfg.prune.steps > 1 else ""
    with run.stages.run("prune", f"prune ({cfg.criterion}, {cfg.prune.scope}{steps})") as ev:
        example = torch.zeros(1, 3, size, size, device=run.device)
        between = _step_finetuner(run, model, on_stage_epoch) if cfg.prune.steps > 1 else None
        report = prune_model(model, cfg.criterion, example, cfg.prune, calib=run.calib(), seed=cfg.train.seed,
                             between_steps=between)
        clear_attention_marks(model)
        ev.detail = f"ratio {report.ratio:.3g}: MACs x{report.macs_fraction:.3f}"
    if report.steps:  # the fine-tuning between steps is fine-tuning: its own line in the timings
        tuned = sum(s.get("seconds", 0.0) for s in report.steps)
        run.stages.seconds["prune"] -= tuned
        report.seconds -= tuned
        run.stages.seconds["step_finetune"] = tuned
    return report


def _step_finetuner(run: _Run, model: nn.Module, on_stage_epoch):
    """Progressive pruning's fine-tuning after each intermediate step: --step-epochs with the
    fine-tuning settings (no distillation), keeping the last epoch; its seconds count as
    fine-tuning (report: prune.steps[].seconds)."""
    cfg = run.cfg
    eval_ds, _, _ = selection_split(run.splits, "last")
    loss = cfg.base_loss()

    def between(k: int) -> dict:
        # its own seed per step: each step's fine-tuning sees other batches and augmentations
        tcfg = replace(cfg.train, epochs=cfg.step_epochs, select="last", seed=cfg.train.seed + 1000 * k)
        _, tr = fit(model, run.splits.train, eval_ds, loss, tcfg,
                    on_epoch=on_stage_epoch and (lambda e: on_stage_epoch(f"step {k}", e)))
        return {"epochs": cfg.step_epochs, "seconds": tr.seconds, "last_epoch_eval": tr.final_accuracy}
    return between


def _finetune(run: _Run, model: nn.Module, teacher: nn.Module | None, on_step, on_epoch, save, resume):
    cfg = run.cfg
    eval_ds, rule, run.selected_on = selection_split(run.splits, cfg.train.select)
    with run.stages.run("finetune", f"fine-tune {cfg.train.epochs} epochs ({cfg.loss})") as ev:
        best, report = fit(model, run.splits.train, eval_ds, cfg.loss_fn(), replace(cfg.train, select=rule),
                           teacher=teacher, on_step=on_step, on_epoch=on_epoch, save=save, resume=resume)
        ev.detail = f"kept epoch {report.best_epoch} (selection: {run.selected_on})"
    return best, report


def _saver(run: _Run, model: nn.Module, meta: ModelMeta, context: dict, last: Path):
    """fit's per-epoch callback: keep '<out>.last' (pruned structure + fine-tune + stage state)."""
    def save(best, state, report):
        ctx = {**context, "accuracy": dict(run.accuracy), "rows": list(run.rows), "seconds": dict(run.stages.seconds)}
        save_checkpoint(last, model, meta, state={"finetune": state, "compress": ctx, "settings": _settings_key(run.cfg)})
    return save


def _settings_key(cfg: CompressConfig) -> str:
    """Everything that must match for --resume to continue the same run (device/workers may change)."""
    settings = asdict(cfg)
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in ("device", "workers")}
    # Settings added later are left out while unused, so a '.last' written before them still resumes.
    if not cfg.sparsity_epochs:
        del settings["sparsity_epochs"], settings["sparsity_reg"]
    if cfg.prune.steps == 1:
        del settings["prune"]["steps"], settings["step_epochs"]
    return json.dumps(settings, sort_keys=True, default=str)


def _load_resume(path: str | Path, cfg: CompressConfig) -> tuple[nn.Module, dict, dict]:
    """The pruned model, the stage context and the fine-tune state of an interrupted run."""
    model, _ = load_checkpoint(path)
    _, _, state = read_checkpoint(path)
    if "compress" not in state or "finetune" not in state:
        raise CheckpointError(f"--resume {path} is not the '<out>.last' file of an interrupted compress run")
    check_resume_settings(path, state, cfg)
    return model, state["compress"], state["finetune"]


def check_resume_settings(path: str | Path, state: dict, cfg: CompressConfig) -> None:
    """The '.last' state was written by a run with these settings (cfg after preflight, which
    resolves --criterion auto); the CLI calls this before decoding any image."""
    key = _settings_key(cfg)
    if state.get("settings") != key:
        diff = _setting_differences(state.get("settings"), key)
        raise ConfigError(f"--resume {show(path)} was made with other compress settings{diff}; repeat the command "
                          "that made it with --resume added")


def _setting_differences(old, new: str, most: int = 3) -> str:
    """' (train.epochs: 150 there, 225 now)': which settings differ, for the refusal; '' when the
    stored key cannot be read (it comes from a file, so every shown value is bounded)."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    try:
        a, b = flat(json.loads(old)), flat(json.loads(new))
    except (TypeError, ValueError, AttributeError, RecursionError):
        return ""
    names = sorted(k for k in a.keys() | b.keys() if a.get(k, "unset") != b.get(k, "unset"))
    def short(v) -> str:
        text = show(v)
        return text if len(text) <= 60 else text[:57] + "..."

    shown = [f"{short(k)}: {short(a.get(k, 'unset'))} there, {short(b.get(k, 'unset'))} now" for k in names[:most]]
    return f" ({'; '.join(shown)}{'; ...' if len(names) > most else ''})" if shown else ""


def _prepare(run: _Run, model: nn.Module, on_progress, on_stage_epoch=None) -> dict:
    """original -> (capture -> fold) -> (sparsify) -> prune, measuring after each; returns the stage context."""
    cfg = run.cfg
    run.measure("original", model)
    fold, kept_reason = None, _fold_or_keep(model, cfg) if has_attention(model) else None
    if kept_reason is not None:
        log.warning("SE blocks stay in the model (%s); pruning through them", kept_reason)
    elif has_attention(model):
        # Every criterion gets the folded, SE-free model: the deployable network is the same for
        # all of them (no SE at inference), so comparisons differ in the channel ranking alone.
        fold = asdict(_capture_and_fold(run, model, on_progress))
        run.measure("folded", model)
    sparsity = None
    if cfg.sparsity_epochs:
        sparsity = {"bn_scale_l1_before": _bn_scale_l1(model),
                    **_sparsify(run, model, on_stage_epoch and (lambda e: on_stage_epoch("sparsify", e)))}
        run.measure("sparsified", model)
    pruned = asdict(_prune(run, model, on_stage_epoch))
    run.measure("pruned", model)
    return {"fold": fold, "kept_reason": kept_reason, "prune": pruned, "sparsity": sparsity}


def _check_data(splits, meta: ModelMeta) -> None:
    check_classes(splits.classes, meta.classes)
    if splits.img_size != meta.img_size:
        raise ConfigError(f"the data is at {splits.img_size}px but the model was trained at {meta.img_size}px; "
                          "load it with evaluation.splits_for(meta, ...)")


def compress(ckpt_path: str | Path, splits, cfg: CompressConfig, *, out: str | Path,
             report_path: str | Path | None = None,
             on_stage: Callable[[StageEvent], None] | None = None,
             on_progress: Callable[[int, int], None] | None = None,
             on_step=None, on_epoch=None, resume: str | Path | None = None,
             on_stage_epoch=None) -> CompressReport:
    """Run the pipeline on the checkpoint at `ckpt_path` with `splits` (from
    evaluation.splits_for, so the checkpoint's own split and normalisation); write the pruned
    checkpoint to `out` and, when given, the report as JSON to `report_path`.

    on_stage(StageEvent) at each stage's start and end; on_progress(done, total) while capturing
    attention; on_step/on_epoch during fine-tuning (see train.loop.fit), on_stage_epoch(name, epoch
    stats) during the optional training stages before the fine-tuning: "sparsify"
    (cfg.sparsity_epochs) and "step K" (progressive pruning, cfg.prune.steps > 1). '<out>.last' is written
    after every fine-tuning epoch; `resume=` that file continues an interrupted run.
    """
    t0, out = time.perf_counter(), Path(out)
    model, meta = preflight(ckpt_path, cfg)
    _check_data(splits, meta)
    run = _Run(cfg, splits, resolve_device(cfg.train.device), _Stages(on_stage))
    model.to(run.device)
    teacher = copy.deepcopy(model) if cfg.distill else None  # the unpruned original, SE included
    if resume is None:
        context = _prepare(run, model, on_progress, on_stage_epoch)
        state = None
    else:  # capture, fold and prune were done before the interruption: continue fine-tuning
        model, context, state = _load_resume(resume, cfg)
        run.accuracy.update(context["accuracy"])
        run.rows[:] = context["rows"]
        run.stages.seconds.update(context["seconds"])
        model.to(run.device)
    # Under torchrun every rank captured, folded and pruned the same data the same way; prove it.
    distributed.check_identical(model, "the pruned model")
    fold, kept_reason, pruned = context["fold"], context["kept_reason"], context["prune"]
    save = _saver(run, model, meta, {k: context.get(k) for k in ("fold", "kept_reason", "prune", "sparsity")},
                  resume_path(out))
    best, tr = _finetune(run, model, teacher, on_step, on_epoch, save, state)
    # Selection looked at validation (or, in the paper's protocol, at test); this records the
    # selected model's selection-split accuracy beside its test accuracy.
    run.accuracy["finetuned_selection"] = tr.best_accuracy
    run.accuracy["finetuned_last_epoch_eval"] = tr.final_accuracy
    run.measure("finetuned", best)
    with run.stages.run("save", f"save {out}"):
        meta = copy.deepcopy(meta)
        meta.history.append(_history(cfg, pruned["ratio"], run.accuracy, run.rows[-1], splits.source))
        if distributed.info().is_main:  # one writer; every rank holds the same model (checked in fit)
            _save_and_verify(out, best, meta, next(iter(make_loader(splits.test, 8, shuffle=False)))[0])
    report = CompressReport(
        criterion=cfg.criterion, ratio=pruned["ratio"],
        params={"before": run.rows[0]["params"], "after": run.rows[-1]["params"]},
        macs={"before": run.rows[0]["macs"], "after": run.rows[-1]["macs"]},
        accuracy=run.accuracy, seconds=run.stages.seconds | {"total": time.perf_counter() - t0},
        seed=cfg.train.seed, arch=meta.arch, data=splits.source, img_size=meta.img_size, eval_split="test",
        selected_on=run.selected_on,
        source=str(ckpt_path), checkpoint=str(out), stages=run.rows,
        fold=fold if kept_reason is None else {"kept_reason": kept_reason}, prune=pruned,
        finetune={"best_epoch": tr.best_epoch, "best_accuracy": tr.best_accuracy, "selection": tr.selection,
                  "peak_epoch": tr.peak_epoch, "peak_accuracy": tr.peak_accuracy,
                  "epochs": [asdict(e) for e in tr.epochs], "resumed_from_epoch": tr.resumed_from_epoch,
                  "augment": splits.train.augment, "crop_scale": splits.train.crop_scale},
        settings=asdict(cfg), sparsity=context.get("sparsity"), distributed={**distributed.info().record(), "rank_digests": tr.rank_digests})
    if report_path is not None and distributed.info().is_main:
        write_json(report_path, asdict(report))
    return report
