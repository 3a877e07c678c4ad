"""`rtdeploy compress`: RemoteTrimmer's channel attention pruning + adaptive mining loss."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import report as fmt
from ..errors import ConfigError
from ..fsutil import check_output
from .app import app
from .common import (Augment, BatchSize, CropScale, Data, DataRoot, Device, Epochs, Force, LabelSmoothing, Lr, Momentum, Schedule, SkipBad, WeightDecay,
                     Workers, console, load_data, progress)

Ckpt = Annotated[Path, typer.Argument(help="The trained checkpoint to compress (from 'rtdeploy train').")]
Criterion = Annotated[str, typer.Option(
    "--criterion", help="Channel ranking: cap (RemoteTrimmer: |gamma| x mean SE attention, needs an SE model), "
                        "bn (network slimming), l1, l2 (filter norms), taylor, fpgm, lamp, random.")]
Ratio = Annotated[Optional[float], typer.Option(
    "--ratio", help="Share of channels removed per layer (local) or overall (global), in (0, 1); "
                    "0.7 (the paper's) unless --target-macs is given.", show_default=False)]
TargetMacs = Annotated[Optional[float], typer.Option(
    "--target-macs", help="Instead of --ratio: the MACs to keep, as a fraction of the original (e.g. 0.1); "
                          "the ratio is searched.")]
Scope = Annotated[str, typer.Option("--scope", help="local: the same ratio in every layer (the paper's); "
                                                    "global: one ranking over all layers.")]
RoundTo = Annotated[str, typer.Option(
    "--round-to", help="Keep widths at multiples of this (8 ran ~2x faster on ONNX Runtime CPU at equal "
                       "MACs); 1 = no rounding; auto = the target's SIMD width (this CPU, or tensor-core "
                       "multiples with --latency-provider cuda/tensorrt), recorded in the report.")]
TargetLatency = Annotated[Optional[float], typer.Option(
    "--target-latency-ms", help="Instead of --ratio: the inference latency to meet, in ms; the ratio is searched by "
                                "exporting and timing candidates on this machine before fine-tuning.")]
LatencyProvider = Annotated[str, typer.Option(
    "--latency-provider", help="With --target-latency-ms (and --round-to auto): where the model will run: cpu, cuda or tensorrt.")]
LatencyThreads = Annotated[int, typer.Option("--latency-threads", help="With --target-latency-ms: inference threads.")]
LatencyBatch = Annotated[int, typer.Option(
    "--latency-batch", help="With --target-latency-ms: images per inference call (not the fine-tuning --batch-size).")]
Loss = Annotated[str, typer.Option("--loss", help="Fine-tuning loss: aml (adaptive mining loss, the paper's) or ce.")]
R1 = Annotated[float, typer.Option("--r1", help="AML weight of the hard-sample term exp(d + d^2).")]
R2 = Annotated[float, typer.Option("--r2", help="AML weight of the cross-entropy term.")]
Distill = Annotated[bool, typer.Option("--distill/--no-distill", help="Also distil from the unpruned model (beyond the paper).")]
KdTemperature = Annotated[float, typer.Option("--kd-temperature", help="Distillation temperature.")]
KdWeight = Annotated[float, typer.Option("--kd-weight", help="Share of the distillation term in the loss, in (0, 1].")]
CalibImages = Annotated[int, typer.Option("--calib-images", help="Train images used to measure the mean SE attention.")]
FinetuneSeed = Annotated[int, typer.Option(
    "--seed", help="Seed for calibration sampling, random ranking and fine-tuning (the split always "
                   "follows the checkpoint's training run).")]
Out = Annotated[Path, typer.Option("--out", help="Pruned checkpoint to write.")]
ReportOut = Annotated[Optional[Path], typer.Option(
    "--report", help="JSON report to write; by default the --out path with .json.", show_default=False)]

_ROW_LABELS = {"original": "original", "folded": "folded (SE stripped)", "pruned": "pruned", "finetuned": "fine-tuned"}


@app.command()
def compress(
    ckpt: Ckpt, out: Out,
    data: Data = None, data_root: DataRoot = None, skip_bad_images: SkipBad = False,
    criterion: Criterion = "cap", ratio: Ratio = None, target_macs: TargetMacs = None, scope: Scope = "local",
    round_to: RoundTo = "8", loss: Loss = "aml", r1: R1 = 1.0, r2: R2 = 1.0,
    # lr 0.01 (the paper's fine-tuning lr, 5x below training from scratch) with momentum and
    # cosine decay: the pruned net keeps its inherited weights and converges in ~30 epochs.
    epochs: Epochs = 30, batch_size: BatchSize = 64, lr: Lr = 0.01, momentum: Momentum = 0.9,
    weight_decay: WeightDecay = 5e-4, schedule: Schedule = "cosine",
    distill: Distill = False, kd_temperature: KdTemperature = 4.0, kd_weight: KdWeight = 0.5,
    augment: Augment = False, crop_scale: CropScale = 1.0, label_smoothing: LabelSmoothing = 0.0, calib_images: CalibImages = 1024, seed: FinetuneSeed = 0, device: Device = "auto", workers: Workers = 0,
    report: ReportOut = None, force: Force = False,
    target_latency_ms: TargetLatency = None, latency_provider: LatencyProvider = "cpu",
    latency_threads: LatencyThreads = 1, latency_batch: LatencyBatch = 1,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", help="Continue an interrupted run from its '<out>.last' file (same command otherwise).")] = None,
):
    """Prune a trained checkpoint with channel attention pruning, then fine-tune it.

    Stages: evaluate -> capture the mean SE attention -> fold it into BatchNorm and strip SE ->
    prune channels (torch-pruning) -> fine-tune (adaptive mining loss) -> save. Accuracies are
    measured on the checkpoint's own test split.

    Example: rtdeploy compress runs/base.pt --data ../shared/data/ucmerced --ratio 0.7 --epochs 30 --out runs/cap70.pt
    """
    from ..compress import CompressConfig, compress as run_compress, planned_stages, preflight
    from ..evaluation import splits_for
    from ..prune import PruneConfig
    from ..train import TrainConfig

    from ..prune.latency import LatencyTarget

    if ratio is not None and target_macs is not None:
        raise ConfigError("pass either --ratio or --target-macs, not both")
    if target_latency_ms is not None and (ratio is not None or target_macs is not None):
        raise ConfigError("pass --target-latency-ms alone, without --ratio or --target-macs")
    latency = (LatencyTarget(target_latency_ms, latency_provider, latency_threads, latency_batch)
               if target_latency_ms is not None else None)
    cfg = CompressConfig(
        criterion=criterion, loss=loss, r1=r1, r2=r2, distill=distill, kd_temperature=kd_temperature,
        kd_weight=kd_weight, calib_images=calib_images,
        prune=PruneConfig(ratio=0.7 if ratio is None else ratio, scope=scope, round_to=round_to, target_macs=target_macs,
                          round_to_target=latency_provider, target_latency=latency),
        train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          label_smoothing=label_smoothing, schedule=schedule, seed=seed, device=device, workers=workers))
    report = report or out.with_suffix(".json")
    check_output(out, force=force or resume is not None)
    check_output(report, force=force or resume is not None, flag="--report")
    model, meta = preflight(ckpt, cfg)  # checkpoint, criterion vs. model, ratio: before decoding data
    stages = planned_stages(model, cfg)
    splits = splits_for(meta, data, data_root=data_root, load=load_data, skip_bad_images=skip_bad_images,
                        augment=augment, crop_scale=crop_scale)
    with _compress_progress(len(stages), epochs) as callbacks:
        r = run_compress(ckpt, splits, cfg, out=out, report_path=report, resume=resume, **callbacks)
    _render(r, out, report)


@contextlib.contextmanager
def _compress_progress(n_stages: int, epochs: int):
    """Callbacks for compress: a bar over the stages (a line per finished stage), and bars for the
    calibration images and the fine-tuning epochs/steps, added when those stages start."""
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

        yield {"on_stage": on_stage, "on_progress": on_progress, "on_step": on_step, "on_epoch": on_epoch}


def _render(r, out: Path, report: Path) -> None:
    base = r.stages[0]
    rows = [{"stage": _ROW_LABELS[s["stage"]], "params": fmt.human_count(s["params"]),
             "MACs": fmt.human_count(s["macs"]), "MACs vs original": f"{s['macs'] / max(base['macs'], 1):.3f}",
             "accuracy": fmt.pct(s["accuracy"])} for s in r.stages]
    title = (f"rtdeploy compress: {r.arch}, {r.criterion} at ratio {r.ratio:.3g} "
             f"({r.settings['prune']['scope']}, round-to {r.settings['prune']['round_to']})")
    console.print(fmt.rich_table(rows, title=title))
    _render_search(r.prune)
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
