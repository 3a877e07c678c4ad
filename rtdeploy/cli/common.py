"""Options shared by several commands (defined once, Typer's Annotated style) and the
progress/console helpers. Only the CLI prints."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..fields import (IMG_SIZE_MAX, IMG_SIZE_MIN, MAX_BATCH, MAX_EPOCHS, MAX_IMAGES, MAX_LR, MAX_SEED,
                      MAX_WEIGHT_DECAY, MAX_WORKERS, flag_value)
from ..names import show

# Tables and results go to stdout. Rich falls back to 80 columns when stdout is a pipe or a log
# file, which truncates the wide side-by-side tables; give those 160.
# With stdout closed ('>&-') sys.stdout is None: the CLI refuses to run (cli.app.main) instead
# of failing here at import.
# Under torchrun every rank runs the command; only rank 0 prints tables, bars and messages.
_QUIET = os.environ.get("RANK", "0") not in ("", "0")
console = Console(width=None if sys.stdout is not None and sys.stdout.isatty() else 160, quiet=_QUIET)
err_console = Console(stderr=True, quiet=_QUIET)  # progress and messages: stderr

Data = Annotated[Optional[str], typer.Option(
    "--data", help="'sample' (the embedded UC Merced subset; train, eval and compress use it when --data "
                   "is omitted), 'eurosat' (torchvision, downloaded under --data-root), or a folder with one "
                   "sub-folder per class.")]
DataRoot = Annotated[Optional[str], typer.Option(
    "--data-root", help="Where 'eurosat' lives or is downloaded to [default: ~/.cache/rtdeploy/eurosat].")]


def bounded(flag: str, low, high, *, integer: bool = False, low_open: bool = False, high_open: bool = False):
    """A Typer callback refusing, at parse time, a value of `flag` that is not finite or not in
    range (inf, nan, 2**70): a one-line ConfigError naming the flag, before any work starts."""
    def check(value):
        return flag_value(flag, value, low, high, integer=integer, low_open=low_open, high_open=high_open)
    return check


def _int(flag: str, low: int, high: int):
    return bounded(flag, low, high, integer=True)


def recipe_option(table: dict, flag: str, field: str, text: str, callback=None):
    """An option whose default comes from the command's --recipe (rtdeploy/defaults.py): it
    parses to None when not given, and --help shows the value of every recipe."""
    from ..defaults import shown

    def check(value):
        return value if value is None or callback is None else callback(value)
    return typer.Option(flag, help=f"{text} \\[default: {shown(table, field)}]", show_default=False, callback=check)


ImgSize = Annotated[int, typer.Option("--img-size", callback=_int("--img-size", IMG_SIZE_MIN, IMG_SIZE_MAX),
                                      help=f"Square input size in pixels ({IMG_SIZE_MIN}..{IMG_SIZE_MAX}); images are resized.")]
Seed = Annotated[int, typer.Option("--seed", callback=_int("--seed", 0, MAX_SEED),
                                   help="Seed for the split, init, shuffling and augmentation.")]
Epochs = Annotated[int, typer.Option("--epochs", callback=_int("--epochs", 1, MAX_EPOCHS), help="Training epochs.")]
BatchSize = Annotated[int, typer.Option("--batch-size", callback=_int("--batch-size", 2, MAX_BATCH),
                                        help="Images per training step. Under torchrun this is the global batch, split across the processes, so N processes follow the one-process run with the same --batch-size and --seed.")]
Lr = Annotated[float, typer.Option("--lr", callback=bounded("--lr", 0, MAX_LR, low_open=True), help="Peak SGD learning rate.")]
Momentum = Annotated[float, typer.Option("--momentum", callback=bounded("--momentum", 0, 1, high_open=True),
                                         help="SGD momentum (the paper used 0).")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", callback=bounded("--weight-decay", 0, MAX_WEIGHT_DECAY),
                                            help="L2 weight decay.")]
Schedule = Annotated[str, typer.Option(
    "--schedule", help="LR schedule: cosine, step (x0.1 at 50% and 75%, the paper's shape), onecycle, constant.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Workers = Annotated[int, typer.Option("--workers", callback=_int("--workers", 0, MAX_WORKERS),
                                      help="Data loader worker processes (images are in memory; 0 is usually fastest).")]
ValFrac = Annotated[float, typer.Option("--val-frac", callback=bounded("--val-frac", 0, 1, high_open=True),
                                        help="Share of images held out for validation (model selection); 0 selects on test like the paper.")]
TestFrac = Annotated[float, typer.Option("--test-frac", callback=bounded("--test-frac", 0, 1, low_open=True, high_open=True),
                                         help="Share of images in the test split (the paper: 0.3).")]
Augment = Annotated[bool, typer.Option("--augment/--no-augment", help="Random flips and 90-degree rotations on the train split (off in the paper's protocol).")]
CropScale = Annotated[float, typer.Option("--crop-scale", callback=bounded("--crop-scale", 0, 1, low_open=True),
                                          help="With --augment: also random square crops of this..1 of the image area, resized back (0.5 lifts UC Merced from scratch by ~4 points; 1 = off).")]
LabelSmoothing = Annotated[float, typer.Option("--label-smoothing", callback=bounded("--label-smoothing", 0, 1, high_open=True),
                                               help="Label smoothing of the cross-entropy term, in [0, 1) (0.1 helps training from scratch on small data).")]
DataCache = Annotated[str, typer.Option(
    "--data-cache", help="Where decoded images live: disk (a cache file under RTDEPLOY_CACHE_DIR, shared by all "
                         "processes through the OS page cache; memory stays flat for data larger than RAM), "
                         "memory (decoded into this process), off (decoded from the image files on demand, "
                         "in --workers processes).")]
SkipBad = Annotated[bool, typer.Option("--skip-bad-images", help="Skip unreadable images (and count them) instead of stopping.")]
Force = Annotated[bool, typer.Option("--force", help="Replace output files that already exist.")]
CalibImages = Annotated[int, typer.Option("--calib-images", callback=_int("--calib-images", 1, MAX_IMAGES),
                                          help="How many calibration images.")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON to this path.")]


def data_input(data: str | None) -> Path | None:
    """--data as an input path when it is a folder (outputs may not be written into it)."""
    return Path(data) if data and Path(data).is_dir() else None


def progress(transient: bool = False) -> Progress:
    # A log or pipe gets no bar (the 'done ...' and per-epoch lines say the same): rich prints a
    # stopped bar and an empty line there, and an error raised mid-run must stay the only line.
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console, transient=transient, disable=not err_console.is_terminal)


@contextlib.contextmanager
def decode_progress(label: str = "decoding images"):
    """An on_progress(done, total) callback drawing a bar while a dataset is decoded.

    The bar starts on the first callback only, so an error raised before any decoding (a bad
    path, a bad flag) stays a one-line message on stderr.
    """
    bar, task = None, None

    def on_progress(done: int, total: int):
        nonlocal bar, task
        if not err_console.is_terminal:  # a log gets no bar: a stopped transient bar leaves an empty line
            return
        if bar is None:
            bar = progress(transient=True)
            bar.start()
            task = bar.add_task(label, total=total, info="")
        bar.update(task, completed=done)

    try:
        yield on_progress
    finally:
        if bar is not None:
            bar.stop()


@contextlib.contextmanager
def training_progress(label: str, epochs: int):
    """(on_step, on_epoch) callbacks: one bar over epochs, one over the current epoch's steps."""
    with progress() as bar:
        ep = bar.add_task(label, total=epochs, info="")
        st = bar.add_task("  steps", total=1, info="")

        def on_step(s):
            bar.update(st, completed=s.step, total=s.steps,
                       info=f"loss {s.loss:.3f} acc {100 * s.accuracy:.1f}% {s.images_per_s:.0f} img/s")

        def on_epoch(e):
            line = (f"epoch {e.epoch}/{epochs}: loss {e.train_loss:.3f}, train {100 * e.train_accuracy:.1f}%, "
                    f"eval {100 * e.eval_accuracy:.1f}% ({e.seconds:.0f}s, {e.images_per_s:.0f} img/s)")
            bar.update(ep, completed=e.epoch, info=line.split(": ", 1)[1].split(", ")[2])
            if not err_console.is_terminal:  # logs and pipes get one line per epoch instead of a bar
                err_console.print(f"{label}: {line}", highlight=False)
            bar.reset(st, total=1, info="")

        yield on_step, on_epoch


def load_data(data, **kwargs):
    """load_splits with a decode progress bar."""
    from ..data import load_splits

    with decode_progress() as on_progress:
        splits = load_splits(data, on_progress=on_progress, **kwargs)
    report_scan(splits)
    return splits


_SKIP_HINT = ", or pass --skip-bad-images to skip bad files"


def load_every_image(data, **kwargs):
    """load_data for commands without --skip-bad-images (eval, export, bench, import): they rebuild
    a model's own split, which needs every file, so a bad image's message must not offer the flag."""
    from ..errors import DataError

    try:
        return load_data(data, **kwargs)
    except DataError as e:
        if _SKIP_HINT not in str(e):
            raise
        raise DataError(str(e).replace(_SKIP_HINT, " (this command rebuilds the model's own split, which needs "
                                                   "every image)")) from e


def report_scan(splits) -> None:
    """One line counting the data folder entries the scan skipped (FIFOs, broken links, links out
    of their class, repeats: see rtdeploy/scan.py), names escaped, never wrapped."""
    if splits.scan.count:
        err_console.print(splits.scan.summary(), markup=False, highlight=False, soft_wrap=True)
    nested = getattr(splits.scan, "nested_only", [])
    if nested:
        err_console.print(f"note: {len(nested)} class folder(s) ({show(', '.join(nested[:3]))}) hold images only in "
                          "sub-folders, which were read recursively as that class; if the sub-folders are the "
                          "classes, point --data at that level", markup=False, highlight=False, soft_wrap=True)
