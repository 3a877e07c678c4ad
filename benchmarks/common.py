"""Shared pieces of the benchmark scripts: the documented recipe, cached base models and
compress runs, and result files that record how they were made.

Every experiment is one command (`python -m benchmarks.<name> --data ../shared/data/ucmerced`),
reuses trained base models and compress runs from `--runs-dir` (keyed by their settings), and
writes `benchmarks/results/<name>.{json,md,png}`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rtdeploy.env import machine, versions
from rtdeploy.fsutil import write_json, write_text

RESULTS = Path(__file__).resolve().parent / "results"
# Two-sided 95 % Student t quantiles by degrees of freedom, for paired differences over seeds.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


@dataclass
class Recipe:
    """A training recipe of the benchmarks (see README, "Results").

    v2 (default): the paper's SE-ResNet18 at 64x64 from scratch, SGD momentum 0.9, weight decay
    5e-4, one-cycle lr 0.1, flips + 90-degree rotations + random crops of 50-100 % of the area,
    label smoothing 0.1, 60 epochs, batch 64, stratified 70/30 split. Fine-tuning after pruning:
    30 epochs, cosine lr 0.01, same optimiser and augmentation, no label smoothing (so CE vs AML
    compares the losses as the paper defines them).
    v1: the first recipe (40 epochs, flips + rotations only, no label smoothing): ~81 % unpruned.
    """

    name: str = "v2"
    arch: str = "resnet18_se"
    img_size: int = 64
    epochs: int = 60
    lr: float = 0.1
    schedule: str = "onecycle"
    batch_size: int = 64
    augment: bool = True
    crop_scale: float = 0.5
    label_smoothing: float = 0.1
    ft_epochs: int = 30
    ft_lr: float = 0.01
    max_per_class: int | None = None  # --quick caps the data

    def file_tag(self) -> str:
        # v1's cached models predate recipe names: they keep their untagged file names.
        return "" if self.name == "v1" else f"_{self.name}"


RECIPES = {"v2": {}, "v1": {"name": "v1", "epochs": 40, "crop_scale": 1.0, "label_smoothing": 0.0}}


def describe(r: Recipe) -> str:
    """One Markdown line: the recipe behind a results file."""
    aug = "flips + 90° rotations" + (f" + random crops of {r.crop_scale:g}-1 of the area" if r.crop_scale < 1 else "")
    smooth = f", label smoothing {r.label_smoothing:g}" if r.label_smoothing else ""
    return (f"Recipe {r.name}: {r.arch} from scratch, {r.epochs} epochs, SGD momentum 0.9, weight decay 5e-4, "
            f"{r.schedule} lr {r.lr:g}, {aug}{smooth}; fine-tuning {r.ft_epochs} epochs, cosine lr {r.ft_lr:g}, "
            "same optimiser and augmentation, no label smoothing.")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default="../shared/data/ucmerced", help="class-folder dataset (UC Merced)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (split + init + fine-tune)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/bench"), help="cache of trained models")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="minutes-long smoke run on a data subset")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="v2",
                   help="training recipe (see benchmarks.common.Recipe); results of other than v2 get a '.<recipe>' suffix")
    return p


def seeds(args) -> list[int]:
    return [int(s) for s in str(args.seeds).split(",") if s.strip()]


def recipe(args, **kw) -> Recipe:
    settings = {**RECIPES[args.recipe], **kw}
    if args.quick:
        settings.update(epochs=3, ft_epochs=2, max_per_class=12)
    return Recipe(**settings)


def runs_dir(args) -> Path:
    path = args.runs_dir / ("quick" if args.quick else "full")
    path.mkdir(parents=True, exist_ok=True)
    return path


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def load(args, r: Recipe, seed: int, augment: bool | None = None, mean=None, std=None):
    from rtdeploy.data import load_splits

    return load_splits(args.data, img_size=r.img_size, seed=seed, augment=r.augment if augment is None else augment,
                       crop_scale=r.crop_scale, max_per_class=r.max_per_class, mean=mean, std=std)


def base_checkpoint(args, r: Recipe, seed: int) -> Path:
    """The trained base model for `seed`, trained now unless a matching one is cached."""
    from rtdeploy.train import TrainConfig
    from rtdeploy.train.job import run_training

    out = runs_dir(args) / f"{r.arch}{r.file_tag()}_s{seed}.pt"
    # The v1/v2 benchmark recipes predate validation splits: they select on test (paper protocol).
    cfg = TrainConfig(epochs=r.epochs, batch_size=r.batch_size, lr=r.lr, schedule=r.schedule, seed=seed,
                      label_smoothing=r.label_smoothing, select="test")
    summary = out.with_suffix(".json")
    if out.exists() and summary.exists():
        s = json.loads(summary.read_text())
        ignore = ("device", "workers", "milestones", "select")
        wanted = {k: v for k, v in asdict(cfg).items() if k not in ignore}
        # Summaries written before a setting existed were made with its default.
        have = {k: s["config"].get(k, getattr(TrainConfig, k)) for k in wanted}
        same = have == wanted and s.get("crop_scale", 1.0) == r.crop_scale
        if same and s["arch"] == r.arch and s["img_size"] == r.img_size and s.get("augment", r.augment) == r.augment:
            return out
    log(f"training {r.arch} seed {seed} ({r.epochs} epochs)")
    run_training(load(args, r, seed), r.arch, cfg, out)
    return out


def compress_run(args, r: Recipe, base: Path, seed: int, *, criterion: str, loss: str, ratio: float = 0.7,
                 round_to: int = 8, distill: bool = False, scope: str = "local", r1: float = 1.0,
                 ft_epochs: int | None = None, target_macs: float | None = None) -> dict:
    """The compress report (as a dict) for these settings, run now unless cached.

    Settings other than the recipe's defaults (AML weight r1, fine-tuning epochs, a MAC target
    instead of the ratio) join the cache key.
    """
    from rtdeploy.checkpoint import load_checkpoint
    from rtdeploy.compress import CompressConfig, compress
    from rtdeploy.evaluation import split_settings
    from rtdeploy.prune import PruneConfig
    from rtdeploy.train import TrainConfig

    ft_epochs = r.ft_epochs if ft_epochs is None else ft_epochs
    tag = f"{base.stem}_{criterion}_{loss}{'_kd' if distill else ''}_r{ratio:g}_rt{round_to}_{scope}"
    tag += (f"_r1-{r1:g}" if r1 != 1.0 else "") + (f"_ft{ft_epochs}" if ft_epochs != r.ft_epochs else "")
    tag += f"_macs{target_macs:.5f}" if target_macs is not None else ""
    out = runs_dir(args) / f"{tag}.pt"
    report = out.with_suffix(".json")
    if out.exists() and report.exists():
        return json.loads(report.read_text())
    log(f"compress {tag}")
    cfg = CompressConfig(criterion=criterion, loss=loss, distill=distill, r1=r1,
                         prune=PruneConfig(ratio=ratio, scope=scope, round_to=round_to, target_macs=target_macs),
                         train=TrainConfig(epochs=ft_epochs, batch_size=r.batch_size, lr=r.ft_lr,
                                           schedule="cosine", seed=seed, label_smoothing=0.0, select="test"))
    _, meta = load_checkpoint(base)
    split = split_settings(meta)
    splits = load(args, r, split["seed"], mean=meta.mean, std=meta.std)
    return asdict(compress(base, splits, cfg, out=out, report_path=report))


def last_epoch_test(report: dict) -> float | None:
    """The last fine-tuning epoch's test accuracy (free of any epoch selection), or None.

    Reports of earlier versions call it `finetuned_last`; now the last epoch's accuracy is
    `finetuned_last_epoch_eval` on the split the epochs were evaluated on, which is the test
    split only when there is no validation split (or in the paper's protocol)."""
    acc = report["accuracy"]
    if "finetuned_last" in acc:
        return acc["finetuned_last"]
    on = report.get("selected_on", "")
    return acc.get("finetuned_last_epoch_eval") if on.startswith("test") or "no validation split" in on else None


def provenance(args, settings: dict) -> dict:
    """What every results file records: command, settings, seeds, versions, machine, date."""
    return {"command": "python -m " + " ".join(shlex.quote(a) for a in [sys.modules["__main__"].__spec__.name, *sys.argv[1:]])
            if getattr(sys.modules["__main__"], "__spec__", None) else " ".join(sys.argv),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "quick": bool(args.quick), "seeds": seeds(args), "data": args.data, "settings": settings,
            "versions": versions(), "machine": machine(), "torch_threads": torch.get_num_threads()}


def results_stem(args, name: str) -> Path:
    """benchmarks/results/<name>[.<recipe> unless v2][.quick], without extension."""
    return args.results_dir / (name + ("" if args.recipe == "v2" else f".{args.recipe}") + (".quick" if args.quick else ""))


def write_results(args, name: str, payload: dict, markdown: str) -> str:
    """benchmarks/results/<name>[.quick].{json,md}; returns the stem (plots go to f"{stem}.png")."""
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_stem(args, name)
    write_json(f"{stem}.json", payload)
    prov = payload["provenance"]
    header = (f"<!-- generated by `{prov['command']}` on {prov['date']}; "
              f"{_where(prov['machine'])}; torch {prov['versions'].get('torch')}, "
              f"onnxruntime {prov['versions'].get('onnxruntime')} -->\n\n")
    write_text(f"{stem}.md", header + markdown)
    log(f"wrote {stem}.json and {stem}.md")
    return str(stem)


def _where(m: dict) -> str:
    """The machine a results file's numbers came from (runs made elsewhere name that machine)."""
    if m.get("ran_on"):
        return f"ran on {m['ran_on']}, summarised on {m.get('summarised_on', '?')}"
    return f"{m['cpu']}, {m['cores']} cores"


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, sd


def paired(a: list[float], b: list[float]) -> dict:
    """Mean paired difference a - b over seeds with its 95 % half-width (Student t)."""
    d = [x - y for x, y in zip(a, b)]
    m, sd = mean_std(d)
    n = len(d)
    half = T95.get(n - 1, 1.96) * sd / math.sqrt(n) if n > 1 else math.inf
    return {"diff": m, "ci95": half, "n": n, "outside_noise": bool(n > 1 and abs(m) > half)}


def pm(values: list[float]) -> str:
    m, sd = mean_std(values)
    return f"{100 * m:.2f} ± {100 * sd:.2f}" if len(values) > 1 else f"{100 * m:.2f}"
