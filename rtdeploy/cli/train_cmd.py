"""`rtdeploy train`, `rtdeploy eval`, `rtdeploy info`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import report as fmt
from ..defaults import TRAIN_RECIPES, resolve
from ..fields import IMG_SIZE_MAX, IMG_SIZE_MIN, MAX_BATCH, MAX_EPOCHS, MAX_LR, MAX_WEIGHT_DECAY
from ..fsutil import check_file_name, plan_outputs, write_text
from ..names import show
from .app import app
from .common import (Data, DataCache, DataRoot, Device, Force, JsonOut, Seed, SkipBad, Workers, bounded, console, data_input,
                     err_console, load_data, load_every_image, recipe_option, training_progress)

Ckpt = Annotated[Path, typer.Argument(help="An rtdeploy checkpoint (.pt) from train or compress.")]


T = TRAIN_RECIPES


def _opt(flag: str, field: str, text: str, low=None, high=None, **bounds):
    check = bounded(flag, low, high, **bounds) if low is not None else None
    return recipe_option(T, flag, field, text, check)


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write (the kept epoch); '<out>.last' keeps the latest epoch for --resume, '<out stem>.json' the summary.")],
    data: Data = None, data_root: DataRoot = None,
    arch: Annotated[str, typer.Option("--arch", help="Registered model: resnet18_se (the paper's), resnet18, vgg16_se, vgg16, tiny_se, tiny, or tv/<torchvision model>.")] = "resnet18_se",
    recipe: Annotated[str, typer.Option("--recipe", help="Where unset options take their defaults: 'default' (the best recipe we measured: see README 'Defaults') or 'paper' (RemoteTrimmer's protocol: no augmentation, best epoch chosen on the TEST split). Options you pass override it.")] = "default",
    img_size: Annotated[Optional[int], _opt("--img-size", "img_size", f"Square input size in pixels ({IMG_SIZE_MIN}..{IMG_SIZE_MAX}); images are resized.", IMG_SIZE_MIN, IMG_SIZE_MAX, integer=True)] = None,
    epochs: Annotated[Optional[int], _opt("--epochs", "epochs", "Training epochs.", 1, MAX_EPOCHS, integer=True)] = None,
    batch_size: Annotated[Optional[int], _opt("--batch-size", "batch_size", "Images per training step. Under torchrun the global batch, split across the processes: N processes follow the one-process run with the same --batch-size and --seed.", 2, MAX_BATCH, integer=True)] = None,
    lr: Annotated[Optional[float], _opt("--lr", "lr", "Peak SGD learning rate.", 0, MAX_LR, low_open=True)] = None,
    momentum: Annotated[Optional[float], _opt("--momentum", "momentum", "SGD momentum (the paper used 0).", 0, 1, high_open=True)] = None,
    weight_decay: Annotated[Optional[float], _opt("--weight-decay", "weight_decay", "L2 weight decay.", 0, MAX_WEIGHT_DECAY)] = None,
    schedule: Annotated[Optional[str], _opt("--schedule", "schedule", "LR schedule: cosine, step (x0.1 at 50% and 75%, the paper's shape), onecycle, constant.")] = None,
    seed: Seed = 0, device: Device = "auto", workers: Workers = 0,
    val_frac: Annotated[Optional[float], _opt("--val-frac", "val_frac", "Share of each class held out for validation (selects the kept epoch; the test split stays untouched until the final report).", 0, 1, high_open=True)] = None,
    test_frac: Annotated[Optional[float], _opt("--test-frac", "test_frac", "Share of each class in the test split (the paper: 0.3).", 0, 1, low_open=True, high_open=True)] = None,
    select: Annotated[Optional[str], _opt("--select", "select", "Which epoch to keep: val (the last epoch unless an earlier one is significantly better on validation), test (the paper's protocol: the best test epoch; labelled so), last.")] = None,
    augment: Annotated[Optional[bool], _opt("--augment/--no-augment", "augment", "Random flips and 90-degree rotations of training images.")] = None,
    crop_scale: Annotated[Optional[float], _opt("--crop-scale", "crop_scale", "With --augment: also random square crops of this..1 of the image area, resized back (1 = off).", 0, 1, low_open=True)] = None,
    label_smoothing: Annotated[Optional[float], _opt("--label-smoothing", "label_smoothing", "Label smoothing of the cross-entropy term, in [0, 1).", 0, 1, high_open=True)] = None,
    skip_bad_images: SkipBad = False, data_cache: DataCache = "disk",
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run from its '<out>.last' file (or the --out checkpoint beside it).")] = None,
    force: Force = False,
):
    """Train a classifier from scratch and keep the epoch chosen on a validation split.

    With no options beyond --data and --out this runs rtdeploy's best measured recipe; --recipe paper reproduces RemoteTrimmer's protocol for comparison.

    Example: rtdeploy train --data ../shared/data/ucmerced --out runs/base.pt
    """
    from ..distributed import setup as setup_distributed
    from ..models import create_model
    from ..train import TrainConfig
    from ..train.job import check_resume, run_training

    r = resolve(T, recipe, img_size=img_size, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                weight_decay=weight_decay, schedule=schedule, val_frac=val_frac, test_frac=test_frac, select=select,
                augment=augment, crop_scale=crop_scale, label_smoothing=label_smoothing)
    cfg = TrainConfig(epochs=r.epochs, batch_size=r.batch_size, lr=r.lr, momentum=r.momentum,
                      weight_decay=r.weight_decay, label_smoothing=r.label_smoothing, schedule=r.schedule, seed=seed,
                      device=device, workers=workers, select=r.select)
    img_size, epochs = r.img_size, r.epochs
    create_model(arch, 2)  # unknown --arch fails now, before images are decoded
    _plan_train(out, data, resume, force)
    from .app import expect_resume_file  # app imports this module: not at the top

    expect_resume_file(Path(f"{out}.last"), resuming=resume is not None)  # checkpoint.resume_path's name
    if resume is not None:  # exists, loads, holds training state for this --arch: before decoding
        check_resume(resume, arch, cfg, img_size)
    setup_distributed(device)  # under torchrun: join the job (gloo on CPU, NCCL on CUDA)
    splits = load_data(data, data_root=data_root, img_size=r.img_size, seed=seed, test_frac=r.test_frac,
                       val_frac=r.val_frac, augment=r.augment, crop_scale=r.crop_scale,
                       skip_bad_images=skip_bad_images, data_cache=data_cache)
    if splits.skipped:
        err_console.print(f"skipped {len(splits.skipped)} unreadable image(s), e.g. {show(splits.skipped[0])}",
                          markup=False, highlight=False)
    with training_progress(f"train {arch}", epochs) as (on_step, on_epoch):
        s = run_training(splits, arch, cfg, out, resume=resume, on_step=on_step, on_epoch=on_epoch)
    rows = [{"": "model", "value": f"{s.arch} ({s.classes} classes, {s.img_size}px)"},
            {"": "data", "value": f"{s.data}: {s.split['train']} train / {s.split['val']} val / {s.split['test']} test"},
            {"": "params", "value": fmt.human_count(s.params)}, {"": "MACs", "value": fmt.human_count(s.macs)},
            {"": "kept epoch", "value": f"{s.best_epoch} of {len(s.epochs)} (selection: {s.selected_on})"},
            {"": f"{s.eval_split} accuracy", "value": f"{fmt.pct(s.best_accuracy)} (last epoch {fmt.pct(s.final_accuracy)})"},
            {"": "test accuracy" + (" (selected on test)" if s.eval_split == "test" and s.selected_on.startswith("test") else ""),
             "value": fmt.pct(s.test_accuracy)},
            {"": "time", "value": f"{s.seconds:.0f} s"}, {"": "checkpoint", "value": str(out)}]
    console.print(fmt.rich_table(rows, title="rtdeploy train"))


def _plan_train(out: Path, data: str | None, resume: Path | None, force: bool) -> None:
    """train writes '<out>', '<out>.last' and '<out stem>.json'; --resume continues (and so
    replaces) the run's own files, and may name the .last file or the checkpoint beside it."""
    from ..checkpoint import resume_path
    from ..train.job import summary_path

    check_file_name("--out", out)  # before '<out>.last' and '<out stem>.json' are derived from it
    own = {os.path.realpath(p) for p in (out, resume_path(out))}
    inputs = [data_input(data)]
    continuing = resume is not None and os.path.realpath(resume) in own
    if resume is not None and not continuing:
        inputs.append(resume)
    # A '.last' from another --out starts writing here: existing files need --force as usual.
    plan_outputs(inputs, {"--out": out, "--out (its '<out>.last' resume file)": resume_path(out),
                          "--out (its summary '<out stem>.json')": summary_path(out)},
                 force=force or continuing)


@app.command("eval")
def evaluate_cmd(ckpt: Ckpt, data: Data = None, data_root: DataRoot = None, json_out: JsonOut = None,
                 split: Annotated[str, typer.Option("--split", help="test, val or train.")] = "test",
                 confusion: Annotated[bool, typer.Option("--confusion/--no-confusion", help="Print the confusion matrix.")] = True,
                 force: Force = False):
    """Accuracy, per-class accuracy and confusion matrix of a checkpoint, on the same split it was trained with."""
    from ..evaluation import evaluate_checkpoint

    plan_outputs([ckpt, data_input(data)], {"--json": json_out}, force=force)
    r = evaluate_checkpoint(ckpt, data, data_root=data_root, split=split, load=load_every_image)
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
         layers: Annotated[bool, typer.Option("--layers/--no-layers", help="List per-layer widths.")] = True,
         force: Force = False):
    """Architecture, classes, input size, params, MACs and per-layer widths of a checkpoint."""
    from ..evaluation import describe_checkpoint

    plan_outputs([ckpt], {"--json": json_out}, force=force)
    r = describe_checkpoint(ckpt)
    rows = [{"": "architecture", "value": r.arch}, {"": "classes", "value": f"{len(r.classes)}: {', '.join(r.classes)}"},
            {"": "input", "value": f"3x{r.img_size}x{r.img_size}, mean {r.mean}, std {r.std}"},
            {"": "params", "value": f"{r.params:,}"}, {"": "MACs", "value": f"{r.macs:,} ({fmt.human_count(r.macs)})"},
            {"": "attention blocks", "value": str(r.attention_blocks)},
            {"": "history", "value": "; ".join(r.history) or "-"}]
    console.print(fmt.rich_table(rows, title=show(ckpt)))
    if layers:
        console.print(fmt.rich_table([{"layer": k, "width": v} for k, v in r.widths.items()], title="layer widths"))
    if json_out:
        write_text(json_out, fmt.to_json(r))
