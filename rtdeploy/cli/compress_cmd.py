"""`rtdeploy compress`: RemoteTrimmer's channel attention pruning + adaptive mining loss."""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import report as fmt
from ..defaults import COMPRESS_RECIPES, resolve
from ..errors import ConfigError
from ..fsutil import check_file_name, plan_outputs
from ..fields import MAX_BATCH, MAX_EPOCHS, MAX_IMAGES, MAX_LR, MAX_SEED, MAX_WEIGHT_DECAY
from .app import app
from .common import (Data, DataCache, DataRoot, Device, Force, SkipBad, Workers, bounded, console, data_input, load_data, progress,
                     recipe_option)

MAX_LOSS_WEIGHT = 1e6       # --r1/--r2: finite weights; the AML terms are O(1)
MAX_KD_TEMPERATURE = 1e4

Ckpt = Annotated[Path, typer.Argument(help="The trained checkpoint to compress (from 'rtdeploy train').")]
C = COMPRESS_RECIPES


def _opt(flag: str, field: str, text: str, low=None, high=None, **bounds):
    check = bounded(flag, low, high, **bounds) if low is not None else None
    return recipe_option(C, flag, field, text, check)


Criterion = Annotated[Optional[str], _opt(
    "--criterion", "criterion", "Channel ranking: cap (RemoteTrimmer: |gamma| x mean SE attention, needs an SE model), "
                                "bn (network slimming), l1, l2 (filter norms), taylor, fpgm, lamp, random; auto = cap "
                                "for a model with SE blocks, else l1.")]
Ratio = Annotated[Optional[float], _opt(
    "--ratio", "ratio", "Share of channels removed per layer (local) or overall (global), in (0, 1); not with "
                        "--target-macs.", 0, 1, low_open=True, high_open=True)]
TargetMacs = Annotated[Optional[float], typer.Option(
    "--target-macs", callback=bounded("--target-macs", 0, 1, low_open=True, high_open=True),
    help="Instead of --ratio: the MACs to keep, as a fraction of the original (e.g. 0.1); the ratio is searched.")]
Scope = Annotated[Optional[str], _opt("--scope", "scope", "local: the same ratio in every layer (the paper's); "
                                                          "global: one ranking over all layers.")]
RoundTo = Annotated[Optional[str], _opt(
    "--round-to", "round_to", "Keep widths at multiples of this (8 ran ~2x faster on ONNX Runtime CPU at equal "
                              "MACs); 1 = no rounding; auto = the target's SIMD width (this CPU, or tensor-core "
                              "multiples with --latency-provider cuda/tensorrt), recorded in the report.")]
TargetLatency = Annotated[Optional[float], typer.Option(
    "--target-latency-ms", callback=bounded("--target-latency-ms", 0, 1e7, low_open=True),
    help="Instead of --ratio: the inference latency to meet, in ms; the ratio is searched by exporting and timing "
         "candidates on this machine before fine-tuning.")]
LatencyProvider = Annotated[str, typer.Option(
    "--latency-provider", help="With --target-latency-ms (and --round-to auto): where the model will run: cpu, cuda or tensorrt.")]
LatencyThreads = Annotated[int, typer.Option("--latency-threads", callback=bounded("--latency-threads", 1, 4096, integer=True),
                                             help="With --target-latency-ms: inference threads.")]
LatencyBatch = Annotated[int, typer.Option(
    "--latency-batch", callback=bounded("--latency-batch", 1, MAX_BATCH, integer=True),
    help="With --target-latency-ms: images per inference call (not the fine-tuning --batch-size).")]
Loss = Annotated[Optional[str], _opt("--loss", "loss", "Fine-tuning loss: aml (adaptive mining loss, the paper's) or ce.")]
R1 = Annotated[Optional[float], _opt("--r1", "r1", "AML weight of the hard-sample term exp(d + d^2).", 0, MAX_LOSS_WEIGHT)]
R2 = Annotated[Optional[float], _opt("--r2", "r2", "AML weight of the cross-entropy term.", 0, MAX_LOSS_WEIGHT)]
Distill = Annotated[Optional[bool], _opt("--distill/--no-distill", "distill", "Also distil from the unpruned model (beyond the paper; each step then also runs the unpruned model).")]
KdTemperature = Annotated[Optional[float], _opt("--kd-temperature", "kd_temperature", "Distillation temperature.", 0, MAX_KD_TEMPERATURE, low_open=True)]
KdWeight = Annotated[Optional[float], _opt("--kd-weight", "kd_weight", "Share of the distillation term in the loss, in (0, 1].", 0, 1, low_open=True)]
SparsityEpochs = Annotated[Optional[int], _opt(
    "--sparsity-epochs", "sparsity_epochs", "Optional stage before pruning: train this many epochs with torch-pruning's "
    "sparsity penalty (L1 on BatchNorm scales for cap/bn, i.e. network slimming; group lasso for the other "
    "criteria), so the channels removed carry less; 0 = off. Costs as many unpruned epochs.", 0, MAX_EPOCHS,
    integer=True)]
SparsityReg = Annotated[Optional[float], _opt(
    "--sparsity-reg", "sparsity_reg", "With --sparsity-epochs: the penalty's weight.", 0, 1, low_open=True)]
PruneSteps = Annotated[Optional[int], _opt(
    "--prune-steps", "prune_steps", "Progressive pruning: reach the ratio in this many steps (torch-pruning's iterative "
    "pruning, ranking again each time), fine-tuning --step-epochs after each step but the last; 1 = one shot.", 1, 100,
    integer=True)]
StepEpochs = Annotated[Optional[int], _opt(
    "--step-epochs", "step_epochs", "With --prune-steps > 1: fine-tuning epochs after each intermediate step (on top of "
    "--epochs after the last).", 1, MAX_EPOCHS, integer=True)]
CalibImages = Annotated[Optional[int], _opt("--calib-images", "calib_images", "Train images used to measure the mean SE attention.", 1, MAX_IMAGES, integer=True)]
FtEpochs = Annotated[Optional[int], _opt("--epochs", "epochs", "Fine-tuning epochs at ratio <= 0.7; the default recipe gives deeper "
    "pruning x (1 - 0.7) / (1 - ratio) of them, at most 3x (225 at 0.8, 450 from 0.9; a ratio searched for "
    "--target-macs/--target-latency-ms keeps the 0.7 length); a value given here is used at any ratio. On a CPU a "
    "pruned epoch costs ~15 % of an unpruned one at 0.7.", 1, MAX_EPOCHS, integer=True)]
FtBatch = Annotated[Optional[int], _opt("--batch-size", "batch_size", "Images per fine-tuning step (under torchrun: the global batch, split across the processes).", 2, MAX_BATCH, integer=True)]
FtLr = Annotated[Optional[float], _opt("--lr", "lr", "Peak fine-tuning learning rate.", 0, MAX_LR, low_open=True)]
FtMomentum = Annotated[Optional[float], _opt("--momentum", "momentum", "SGD momentum.", 0, 1, high_open=True)]
FtWd = Annotated[Optional[float], _opt("--weight-decay", "weight_decay", "L2 weight decay.", 0, MAX_WEIGHT_DECAY)]
FtSchedule = Annotated[Optional[str], _opt("--schedule", "schedule", "LR schedule: cosine, step, onecycle, constant.")]
FtSelect = Annotated[Optional[str], _opt("--select", "select", "Which fine-tuning epoch to keep: val (the parent's validation split; the last epoch unless an earlier one is significantly better; the last epoch when the parent has no validation split), test (the paper's protocol; labelled so), last.")]
FtAugment = Annotated[Optional[bool], _opt("--augment/--no-augment", "augment", "Random flips and 90-degree rotations of training images while fine-tuning.")]
FtCrop = Annotated[Optional[float], _opt("--crop-scale", "crop_scale", "With --augment: random square crops of this..1 of the area (1 = off).", 0, 1, low_open=True)]
FtSmoothing = Annotated[Optional[float], _opt("--label-smoothing", "label_smoothing", "Label smoothing of the cross-entropy term while fine-tuning.", 0, 1, high_open=True)]
Recipe = Annotated[str, typer.Option("--recipe", help="Where unset options take their defaults: 'default' (the best recipe we measured: see README 'Defaults') or 'paper' (RemoteTrimmer's one-shot CAP + AML, 30 epochs, best epoch chosen on the TEST split). Options you pass override it.")]
FinetuneSeed = Annotated[int, typer.Option(
    "--seed", callback=bounded("--seed", 0, MAX_SEED, integer=True), help="Seed for calibration sampling, random ranking and fine-tuning (the split always "
                   "follows the checkpoint's training run).")]
Out = Annotated[Path, typer.Option("--out", help="Pruned checkpoint to write.")]
ReportOut = Annotated[Optional[Path], typer.Option(
    "--report", help="JSON report to write; by default the --out path with .json.", show_default=False)]

_ROW_LABELS = {"original": "original", "folded": "folded (SE stripped)", "sparsified": "after sparsity training",
               "pruned": "pruned", "finetuned": "fine-tuned"}


@app.command()
def compress(
    ckpt: Ckpt, out: Out,
    data: Data = None, data_root: DataRoot = None, skip_bad_images: SkipBad = False, recipe: Recipe = "default",
    criterion: Criterion = None, ratio: Ratio = None, target_macs: TargetMacs = None, scope: Scope = None,
    round_to: RoundTo = None, loss: Loss = None, r1: R1 = None, r2: R2 = None,
    epochs: FtEpochs = None, batch_size: FtBatch = None, lr: FtLr = None, momentum: FtMomentum = None,
    weight_decay: FtWd = None, schedule: FtSchedule = None, select: FtSelect = None,
    distill: Distill = None, kd_temperature: KdTemperature = None, kd_weight: KdWeight = None,
    augment: FtAugment = None, crop_scale: FtCrop = None, label_smoothing: FtSmoothing = None,
    calib_images: CalibImages = None, sparsity_epochs: SparsityEpochs = None, sparsity_reg: SparsityReg = None,
    prune_steps: PruneSteps = None, step_epochs: StepEpochs = None,
    seed: FinetuneSeed = 0, device: Device = "auto", workers: Workers = 0,
    report: ReportOut = None, force: Force = False, data_cache: DataCache = "disk",
    target_latency_ms: TargetLatency = None, latency_provider: LatencyProvider = "cpu",
    latency_threads: LatencyThreads = 1, latency_batch: LatencyBatch = 1,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", help="Continue an interrupted run from its '<out>.last' file (same command otherwise).")] = None,
):
    """Prune a trained checkpoint (channel attention pruning where it has SE blocks), then fine-tune it.

    Stages: evaluate -> capture the mean SE attention -> fold it into BatchNorm and strip SE -> prune channels (torch-pruning) -> fine-tune -> save. Accuracies are measured on the checkpoint's own test split; the kept fine-tuning epoch is chosen on its validation split.

    Example: rtdeploy compress runs/base.pt --data ../shared/data/ucmerced --out runs/pruned.pt
    """
    if ratio is not None and target_macs is not None:
        raise ConfigError("pass either --ratio or --target-macs, not both")
    if target_latency_ms is not None and (ratio is not None or target_macs is not None):
        raise ConfigError("pass --target-latency-ms alone, without --ratio or --target-macs")
    r = resolve(C, recipe, criterion=criterion, ratio=ratio, scope=scope, round_to=round_to, loss=loss, r1=r1, r2=r2,
                epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                schedule=schedule, select=select, distill=distill, kd_temperature=kd_temperature, kd_weight=kd_weight,
                augment=augment, crop_scale=crop_scale, label_smoothing=label_smoothing, calib_images=calib_images,
                sparsity_epochs=sparsity_epochs, sparsity_reg=sparsity_reg, prune_steps=prune_steps,
                step_epochs=step_epochs)
    if epochs is not None:
        r = replace(r, epochs_ratio=None)  # the user's --epochs at every ratio
    report_flag = "--report" if report is not None else "--out (its report '<out stem>.json')"
    report = report or check_file_name("--out", out).with_suffix(".json")
    _plan(ckpt, out, (report_flag, report), data, resume, force)
    from .app import expect_resume_file  # app imports this module: not at the top

    expect_resume_file(Path(f"{out}.last"), resuming=resume is not None)  # checkpoint.resume_path's name
    resume_state = _check_resume(resume) if resume is not None else None

    # The pruning stack loads only now: torch-pruning brings timm, torchvision and torch._dynamo
    # with it (~4 s), and a mistyped path or an existing output should not wait for that.
    from ..compress import (CompressConfig, check_resume_settings, compress as run_compress, finetune_defaults,
                            planned_stages, preflight)
    from ..distributed import setup as setup_distributed
    from ..evaluation import splits_for
    from ..prune import PruneConfig
    from ..prune.latency import LatencyTarget

    latency = (LatencyTarget(target_latency_ms, latency_provider, latency_threads, latency_batch)
               if target_latency_ms is not None else None)
    prune = PruneConfig(ratio=r.ratio, steps=r.prune_steps, scope=r.scope, round_to=r.round_to, target_macs=target_macs,
                        round_to_target=latency_provider, target_latency=latency)
    cfg = CompressConfig(
        criterion=r.criterion, loss=r.loss, r1=r.r1, r2=r.r2, distill=r.distill, kd_temperature=r.kd_temperature,
        kd_weight=r.kd_weight, calib_images=r.calib_images, sparsity_epochs=r.sparsity_epochs,
        sparsity_reg=r.sparsity_reg, step_epochs=r.step_epochs, prune=prune,
        train=replace(finetune_defaults(r, prune), seed=seed, device=device, workers=workers))
    epochs = cfg.train.epochs
    model, meta = preflight(ckpt, cfg)  # checkpoint, criterion vs. model, ratio: before decoding data
    if resume_state is not None:
        check_resume_settings(resume, resume_state, cfg)  # needs cfg as preflight resolved it
    stages = planned_stages(model, cfg)
    setup_distributed(device)  # under torchrun: join the job (gloo on CPU, NCCL on CUDA)
    splits = splits_for(meta, data, data_root=data_root, load=load_data, skip_bad_images=skip_bad_images,
                        augment=r.augment, crop_scale=r.crop_scale, data_cache=data_cache)
    with _compress_progress(len(stages), epochs, cfg.sparsity_epochs, cfg.step_epochs) as callbacks:
        r = run_compress(ckpt, splits, cfg, out=out, report_path=report, resume=resume, **callbacks)
    _render(r, out, report)


def _plan(ckpt: Path, out: Path, report: tuple[str, Path | None], data: str | None, resume: Path | None,
          force: bool) -> None:
    """compress writes '<out>', '<out>.last' and the report; --resume continues (and replaces) them."""
    from ..checkpoint import resume_path

    inputs = [ckpt, data_input(data)]
    continuing = resume is not None and os.path.realpath(resume) == os.path.realpath(resume_path(out))
    if resume is not None and not continuing:
        inputs.append(resume)
    # Resuming '<out>.last' continues (and replaces) this run's own files; a '.last' from elsewhere
    # writes to a new --out, where existing files are only replaced with --force.
    plan_outputs(inputs, {"--out": out, "--out (its '<out>.last' resume file)": resume_path(out), report[0]: report[1]},
                 force=force or continuing)


def _check_resume(path: Path) -> dict:
    """--resume loads and holds an intact fine-tuning state: checked before any image is decoded."""
    from ..checkpoint import build_model, read_checkpoint
    from ..errors import CheckpointError
    from ..fields import FieldError
    from ..names import show
    from ..train.job import check_train_state

    meta, _, state = read_checkpoint(path)
    if not isinstance(state.get("compress"), dict) or not isinstance(state.get("finetune"), dict) \
            or not isinstance(state.get("settings"), str):
        raise CheckpointError(f"--resume {show(path)} is not the '<out>.last' file of an interrupted compress run; "
                              f"pass that file, or start again without --resume")
    check_train_state(state["finetune"], path, build_model(meta, path))
    try:
        check_compress_context(state["compress"])
    except FieldError as e:
        raise CheckpointError(f"--resume {show(path)} has a damaged compress state: {e}; "
                              f"start again without --resume") from e
    return state


def check_compress_context(ctx: dict) -> None:
    """The stage results compress stored in '<out>.last' (see compress._saver), used on resume."""
    from ..fields import FieldError, dict_of, integer, list_of_dicts, number, text

    for key in ("fold", "prune", "accuracy", "seconds"):
        if ctx.get(key) is not None or key != "fold":
            dict_of(ctx.get(key), f"state.compress.{key}")
    if ctx.get("kept_reason") is not None:
        text(ctx["kept_reason"], "state.compress.kept_reason")
    number(ctx["prune"].get("ratio"), "state.compress.prune.ratio", 0, 1)
    for row in list_of_dicts(ctx["prune"].get("steps", []), "state.compress.prune.steps"):  # --prune-steps
        integer(row.get("step"), "state.compress.prune.steps step", 1, 100)
        for k, v in row.items():
            number(v, f"state.compress.prune.steps {k}", 0, 1e16)
    if ctx.get("sparsity") is not None:  # --sparsity-epochs: reported again on resume
        sparsity = dict_of(ctx["sparsity"], "state.compress.sparsity")
        integer(sparsity.get("epochs"), "state.compress.sparsity.epochs", 0, MAX_EPOCHS)
        number(sparsity.get("reg"), "state.compress.sparsity.reg", 0, 1)
        text(sparsity.get("regularizer"), "state.compress.sparsity.regularizer")
        for k, v in sparsity.items():  # the rest goes into the JSON report as it is
            if isinstance(v, str):
                text(v, f"state.compress.sparsity.{k}", limit=200)
            elif not (v is None or isinstance(v, (int, float))) or (isinstance(v, float) and not math.isfinite(v)):
                raise FieldError(f"state.compress.sparsity.{k}", "a finite number, a text or null", v)
    for k, v in ctx["accuracy"].items():
        if v is not None:
            number(v, f"state.compress.accuracy.{k}", 0, 1)
    for k, v in ctx["seconds"].items():
        number(v, f"state.compress.seconds.{k}", 0, 1e12)
    for row in list_of_dicts(ctx.get("rows"), "state.compress.rows"):
        text(row.get("stage"), "state.compress.rows stage")
        integer(row.get("params"), "state.compress.rows params", 0, 10**13)
        integer(row.get("macs"), "state.compress.rows macs", 0, 10**16)
        number(row.get("accuracy"), "state.compress.rows accuracy", 0, 1)


@contextlib.contextmanager
def _compress_progress(n_stages: int, epochs: int, sparsity_epochs: int = 0, step_epochs: int = 0):
    """Callbacks for compress: a bar over the stages (a line per finished stage), and bars for the
    calibration images, the sparsity-training epochs, the fine-tuning after each progressive
    pruning step, and the fine-tuning epochs/steps, added when
    those stages start."""
    with progress() as bar:
        stage_bar = bar.add_task("compress", total=n_stages, info="")
        tasks: dict[str, int] = {}

        def task(name: str, label: str, total: int) -> int:
            if name not in tasks:
                tasks[name] = bar.add_task(label, total=total, info="")
            return tasks[name]

        def on_stage(ev):
            if ev.seconds is None:
                bar.update(stage_bar, info=ev.label)
                return
            bar.advance(stage_bar)
            bar.console.print(f"[green]done[/] {ev.label} [dim]({ev.seconds:.1f} s)[/] {ev.detail}")

        def on_progress(done: int, total: int):
            bar.update(task("capture", "  calibration", total), completed=done, total=total)

        def on_step(s):
            task("epochs", "  fine-tune", epochs)
            bar.update(task("steps", "  steps", s.steps), completed=s.step, total=s.steps,
                       info=f"loss {s.loss:.3f} acc {100 * s.accuracy:.1f}% {s.images_per_s:.0f} img/s")

        def on_epoch(e):
            bar.update(task("epochs", "  fine-tune", epochs), completed=e.epoch,
                       info=f"epoch {e.epoch}: eval {100 * e.eval_accuracy:.1f}% ({e.seconds:.0f}s)")
            if not bar.console.is_terminal:  # logs get one line per epoch
                bar.console.print(f"fine-tune epoch {e.epoch}/{epochs}: loss {e.train_loss:.3f}, "
                                  f"eval {100 * e.eval_accuracy:.1f}% ({e.seconds:.0f}s)", highlight=False)
            bar.reset(task("steps", "  steps", 1), total=1, info="")

        def on_stage_epoch(name: str, e):  # "sparsify" or "step K" (progressive pruning)
            label, total = ("sparsity training", sparsity_epochs) if name == "sparsify" else \
                (f"fine-tune after {name}", step_epochs)
            bar.update(task(name, f"  {label}", total), completed=e.epoch,
                       info=f"epoch {e.epoch}: eval {100 * e.eval_accuracy:.1f}% ({e.seconds:.0f}s)")
            if not bar.console.is_terminal:
                bar.console.print(f"{label} epoch {e.epoch}/{total}: loss {e.train_loss:.3f}, "
                                  f"eval {100 * e.eval_accuracy:.1f}% ({e.seconds:.0f}s)", highlight=False)

        yield {"on_stage": on_stage, "on_progress": on_progress, "on_step": on_step, "on_epoch": on_epoch,
               "on_stage_epoch": on_stage_epoch}


def _render(r, out: Path, report: Path) -> None:
    base = r.stages[0]
    rows = [{"stage": _ROW_LABELS[s["stage"]], "params": fmt.human_count(s["params"]),
             "MACs": fmt.human_count(s["macs"]), "MACs vs original": f"{s['macs'] / max(base['macs'], 1):.3f}",
             "test accuracy": fmt.pct(s["accuracy"])} for s in r.stages]
    title = (f"rtdeploy compress: {r.arch}, {r.criterion} at ratio {r.ratio:.3g} "
             f"({r.settings['prune']['scope']}, round-to {r.settings['prune']['round_to']})")
    console.print(fmt.rich_table(rows, title=title))
    _render_search(r.prune)
    ft = r.finetune
    console.print(f"kept fine-tuning epoch {ft['best_epoch']} of {len(ft['epochs'])}, selected on: {r.selected_on}"
                  + ("  [bold red](test accuracy selected on test: optimistic)[/]" if r.selected_on.startswith("test") else ""))
    times = [{"stage": k.replace("_", " "), "seconds": f"{v:.1f}"} for k, v in r.seconds.items()]
    console.print(fmt.rich_table(times, title="time per stage"))
    console.print(f"wrote {out} and {report}")


def _render_search(prune: dict) -> None:
    """--round-to auto's choice and --target-latency-ms's trials (both also in the JSON report)."""
    if prune.get("round_to_reason"):
        console.print(f"round-to {prune['round_to_reason']}", highlight=False)
    target = prune.get("target_latency")
    if target:
        trials = [{"ratio": f"{t['ratio']:.4f}", "MACs vs original": f"{t['macs_fraction']:.3f}",
                   "latency ms": f"{t['latency_ms']:.3f}", "meets": "yes" if t["meets"] else "no"}
                  for t in prune["search"]]
        console.print(fmt.rich_table(trials, title=f"--target-latency-ms {target['ms']:g} ({target['provider']}, "
                                                   f"{target['threads']} thread(s), batch {target['batch']}): trials"))
