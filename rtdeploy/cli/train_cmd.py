"""`rtdeploy train`, `rtdeploy eval`, `rtdeploy info`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import report as fmt
from ..fsutil import check_output, write_text
from .app import app
from .common import (Augment, BatchSize, CropScale, Data, DataCache, DataRoot, Device, Epochs, Force, ImgSize, JsonOut,
                     LabelSmoothing, Lr, Momentum, Schedule, Seed, SkipBad, TestFrac, ValFrac, WeightDecay, Workers, console,
                     err_console, load_data, training_progress)

Ckpt = Annotated[Path, typer.Argument(help="An rtdeploy checkpoint (.pt) from train or compress.")]


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write (best epoch); '<out>.last' keeps the latest epoch for --resume, '<out stem>.json' the summary.")],
    data: Data = None, data_root: DataRoot = None,
    arch: Annotated[str, typer.Option("--arch", help="Registered model: resnet18_se (the paper's), resnet18, vgg16_se, vgg16, tiny_se, tiny, or tv/<torchvision model>.")] = "resnet18_se",
    img_size: ImgSize = 64, epochs: Epochs = 30, batch_size: BatchSize = 64, lr: Lr = 0.05,
    momentum: Momentum = 0.9, weight_decay: WeightDecay = 5e-4, schedule: Schedule = "cosine",
    seed: Seed = 0, device: Device = "auto", workers: Workers = 0, val_frac: ValFrac = 0.0,
    test_frac: TestFrac = 0.3, augment: Augment = False, crop_scale: CropScale = 1.0,
    label_smoothing: LabelSmoothing = 0.0, skip_bad_images: SkipBad = False, data_cache: DataCache = "disk",
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run from its '<out>.last' file (or the --out checkpoint beside it).")] = None,
    force: Force = False,
):
    """Train a classifier from scratch and keep the best epoch.

    Example: rtdeploy train --data ../shared/data/ucmerced --arch resnet18_se --img-size 64 --epochs 30 --out runs/base.pt
    """
    from ..distributed import setup as setup_distributed
    from ..models import create_model
    from ..train import TrainConfig
    from ..train.job import run_training, summary_path

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                      weight_decay=weight_decay, label_smoothing=label_smoothing, schedule=schedule, seed=seed,
                      device=device, workers=workers)
    create_model(arch, 2)  # unknown --arch fails now, before images are decoded
    check_output(out, force=force or resume is not None)
    check_output(summary_path(out), force=force or resume is not None, flag="--out (its summary JSON)")
    setup_distributed(device)  # under torchrun: join the job (gloo on CPU, NCCL on CUDA)
    splits = load_data(data, data_root=data_root, img_size=img_size, seed=seed, test_frac=test_frac,
                       val_frac=val_frac, augment=augment, crop_scale=crop_scale,
                       skip_bad_images=skip_bad_images, data_cache=data_cache)
    if splits.skipped:
        err_console.print(f"skipped {len(splits.skipped)} unreadable image(s), e.g. {splits.skipped[0]}")
    with training_progress(f"train {arch}", epochs) as (on_step, on_epoch):
        s = run_training(splits, arch, cfg, out, resume=resume, on_step=on_step, on_epoch=on_epoch)
    rows = [{"": "model", "value": f"{s.arch} ({s.classes} classes, {s.img_size}px)"},
            {"": "data", "value": f"{s.data}: {s.split['train']} train / {s.split['val']} val / {s.split['test']} test"},
            {"": "params", "value": fmt.human_count(s.params)}, {"": "MACs", "value": fmt.human_count(s.macs)},
            {"": f"best {s.eval_split} accuracy", "value": f"{fmt.pct(s.best_accuracy)} (epoch {s.best_epoch})"},
            {"": "final accuracy", "value": fmt.pct(s.final_accuracy)},
            {"": "time", "value": f"{s.seconds:.0f} s"}, {"": "checkpoint", "value": str(out)}]
    console.print(fmt.rich_table(rows, title="rtdeploy train"))


@app.command("eval")
def evaluate_cmd(ckpt: Ckpt, data: Data = None, data_root: DataRoot = None, json_out: JsonOut = None,
                 split: Annotated[str, typer.Option("--split", help="test, val or train.")] = "test",
                 confusion: Annotated[bool, typer.Option("--confusion/--no-confusion", help="Print the confusion matrix.")] = True):
    """Accuracy, per-class accuracy and confusion matrix of a checkpoint, on the same split it was trained with."""
    from ..evaluation import evaluate_checkpoint

    check_output(json_out, flag="--json")
    r = evaluate_checkpoint(ckpt, data, data_root=data_root, split=split, load=load_data)
    console.print(f"[bold]{r.arch}[/] on {r.data} ({r.split} split, {r.images} images): "
                  f"accuracy [bold]{fmt.pct(r.accuracy)}[/]")
    rows = [{"class": c, "accuracy": fmt.pct(a), "images": n} for c, a, n in zip(r.classes, r.per_class_accuracy, r.per_class_images)]
    console.print(fmt.rich_table(rows, title="per-class accuracy"))
    if confusion:
        abbrev = [c[:4] for c in r.classes]
        conf_rows = [{"true \\ pred": c, **{a: str(v) for a, v in zip(abbrev, row)}} for c, row in zip(r.classes, r.confusion)]
        console.print(fmt.rich_table(conf_rows, ["true \\ pred", *abbrev], title="confusion matrix"))
    if json_out:
        write_text(json_out, fmt.to_json(r))


@app.command()
def info(ckpt: Ckpt, json_out: JsonOut = None,
         layers: Annotated[bool, typer.Option("--layers/--no-layers", help="List per-layer widths.")] = True):
    """Architecture, classes, input size, params, MACs and per-layer widths of a checkpoint."""
    from ..evaluation import describe_checkpoint

    check_output(json_out, flag="--json")
    r = describe_checkpoint(ckpt)
    rows = [{"": "architecture", "value": r.arch}, {"": "classes", "value": f"{len(r.classes)}: {', '.join(r.classes)}"},
            {"": "input", "value": f"3x{r.img_size}x{r.img_size}, mean {r.mean}, std {r.std}"},
            {"": "params", "value": f"{r.params:,}"}, {"": "MACs", "value": f"{r.macs:,} ({fmt.human_count(r.macs)})"},
            {"": "attention blocks", "value": str(r.attention_blocks)},
            {"": "history", "value": "; ".join(r.history) or "-"}]
    console.print(fmt.rich_table(rows, title=str(ckpt)))
    if layers:
        console.print(fmt.rich_table([{"layer": k, "width": v} for k, v in r.widths.items()], title="layer widths"))
    if json_out:
        write_text(json_out, fmt.to_json(r))
