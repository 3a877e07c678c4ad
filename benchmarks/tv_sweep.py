"""Every torchvision classifier through train -> compress -> export, or refused up front (issue 12).

For each name in torchvision.models.list_models(module=torchvision.models): train `tv/<name>` for
one epoch on a tiny real folder (3 UC Merced classes x 4 images of the embedded sample) at the
smallest input the model accepts, compress it with a baseline criterion (l1, ratio 0.5, one
fine-tuning epoch), export it to ONNX with the parity check. The outcome per model is one of

  worked   the exported pruned model passed parity (params/MACs before and after recorded)
  refused  compress's preflight said why this architecture cannot be pruned (a one-line exit-2
           message, before any work), recorded verbatim
  failed   anything else (a crash, a refusal after work started): a bug to fix

Runs in-process through the library calls the CLI makes (the CLI itself is exercised for a
couple of models in tests/test_tv_sweep.py). Writes benchmarks/results/tv_sweep.{json,md}.

    python -m benchmarks.tv_sweep [--only a,b] [--work-dir runs/tv_sweep] [--resume]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import time
import traceback
from pathlib import Path

import torch

from benchmarks.common import RESULTS, log, provenance, write_results

CANDIDATE_SIZES = (32, 64, 75, 96, 128, 160, 224)  # inception_v3 needs 75, ViTs exactly 224
CLASSES, PER_CLASS = 3, 4
CRITERION, RATIO = "l1", 0.5


def tiny_folder(root: Path) -> Path:
    """CLASSES x PER_CLASS real images: links into the embedded UC Merced sample."""
    from rtdeploy.data import sample_path

    if root.is_dir():
        return root
    src = sample_path()
    for cls in sorted(p.name for p in src.iterdir() if p.is_dir())[:CLASSES]:
        (root / cls).mkdir(parents=True)
        for img in sorted((src / cls).iterdir())[:PER_CLASS]:
            shutil.copyfile(img, root / cls / img.name)
    return root


def smallest_input(arch: str, sizes=CANDIDATE_SIZES) -> int:
    """The smallest square size at which `arch` runs forward in train mode (batch 2) and eval mode."""
    from rtdeploy.models import create_model

    model = create_model(arch, CLASSES)
    for size in sizes:
        try:
            with torch.no_grad():
                model.train()(torch.zeros(2, 3, size, size))
                model.eval()(torch.zeros(1, 3, size, size))
            return size
        except (RuntimeError, ValueError, AssertionError):
            continue
    raise ValueError(f"{arch} runs at none of the sizes {sizes}")


def _train(splits, arch: str, work: Path) -> Path:
    from rtdeploy.train import TrainConfig
    from rtdeploy.train.job import run_training

    out = work / "base.pt"
    run_training(splits, arch, TrainConfig(epochs=1, batch_size=16, lr=0.01, schedule="constant", seed=0), out)
    return out


def _untrained(arch: str, splits, out: Path) -> Path:
    from rtdeploy.checkpoint import ModelMeta, save_checkpoint
    from rtdeploy.models import create_model

    meta = ModelMeta(arch=arch, classes=list(splits.classes), img_size=splits.img_size, mean=splits.mean, std=splits.std)
    save_checkpoint(out, create_model(arch, len(splits.classes)), meta)
    return out


def _compress_cfg():
    from rtdeploy.compress import CompressConfig
    from rtdeploy.prune import PruneConfig
    from rtdeploy.train import TrainConfig

    return CompressConfig(criterion=CRITERION, loss="ce", prune=PruneConfig(ratio=RATIO),
                          train=TrainConfig(epochs=1, batch_size=16, lr=0.001, schedule="constant", seed=0),
                          calib_images=16)


class _Clock:
    """Seconds per stage of one model's run, into row["stage_seconds"]."""

    def __init__(self, row: dict):
        self.row, self.stage, self.t0 = row, "", time.perf_counter()
        row.setdefault("stage_seconds", {})

    def enter(self, stage: str) -> None:
        if self.stage:
            self.row["stage_seconds"][self.stage] = round(time.perf_counter() - self.t0, 2)
        self.stage, self.t0 = stage, time.perf_counter()

    def stop(self) -> None:
        self.enter("")
        self.row["seconds"] = round(sum(self.row["stage_seconds"].values()), 2)


def _failed(row: dict, stage: str, e: Exception) -> None:
    row.update(outcome="failed", stage=stage, error=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}",
               traceback=traceback.format_exc(limit=-3))


def preflight_one(name: str, data: Path, work: Path) -> dict:
    """Smallest input, then what `rtdeploy compress` checks before any work (it depends on the
    architecture alone, so an untrained model answers it): outcome "refused" or "pending"."""
    from rtdeploy.compress import preflight
    from rtdeploy.data import load_splits
    from rtdeploy.errors import ConfigError
    from rtdeploy.prune import FoldError, UnprunableError

    row, clock = {"name": name, "outcome": "pending"}, None
    clock = _Clock(row)
    work.mkdir(parents=True, exist_ok=True)
    try:
        clock.enter("input size")
        row["img_size"] = size = smallest_input(f"tv/{name}")
        clock.enter("preflight")
        splits = load_splits(str(data), img_size=size, seed=0)
        preflight(_untrained(f"tv/{name}", splits, work / "untrained.pt"), _compress_cfg())
    except (UnprunableError, FoldError, ConfigError) as e:  # the refusals; a CheckpointError would be a bug
        row.update(outcome="refused", reason=str(e))
    except Exception as e:  # noqa: BLE001 - the sweep records every failure instead of stopping
        _failed(row, clock.stage, e)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        clock.stop()
    return row


def pipeline_one(row: dict, data: Path, work: Path) -> dict:
    """train -> compress -> export with parity for a model that passed preflight."""
    from rtdeploy.compress import compress
    from rtdeploy.data import load_splits
    from rtdeploy.export import ExportConfig, export_checkpoint

    arch, clock = f"tv/{row['name']}", _Clock(row)
    work.mkdir(parents=True, exist_ok=True)
    try:
        clock.enter("train")
        splits = load_splits(str(data), img_size=row["img_size"], seed=0)
        base = _train(splits, arch, work)
        clock.enter("compress")
        r = compress(base, splits, _compress_cfg(), out=work / "pruned.pt", report_path=work / "pruned.json")
        clock.enter("export")
        ex = export_checkpoint(work / "pruned.pt", work / "pruned.onnx", ExportConfig(parity_images=16), data=str(data))
        row.update(outcome="worked", params=r.params, macs=r.macs, ratio=r.ratio,
                   fold=bool(r.fold and "blocks" in r.fold),
                   parity_max_abs_diff=ex.parity.max_abs_diff, parity_top1=ex.parity.top1_agreement)
    except Exception as e:  # noqa: BLE001 - the sweep records every failure instead of stopping
        _failed(row, clock.stage, e)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        clock.stop()
    return row


def _size(name: str) -> int:
    """Parameter count, from a model built on the meta device (no memory, no init cost)."""
    from rtdeploy.models import create_model

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in create_model(f"tv/{name}", CLASSES).parameters())
    except NotImplementedError:  # regnet computes its widths with tensors; its name gives its FLOPs
        flops = re.fullmatch(r"regnet_[xy]_(\d+)_?(\d*)(mf|gf)", name)
        if flops is None:
            raise
        value = float(flops[1] + ("." + flops[2] if flops[2] else "")) * (1e6 if flops[3] == "mf" else 1e9)
        return int(0.008 * value)  # RegNets have ~8 parameters per thousand FLOPs (400MF: 4.3 M, 128GF: 645 M)


def _markdown(rows: list[dict]) -> str:
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("worked", "refused", "failed", "pending")}
    lines = [f"# torchvision sweep: train -> compress ({CRITERION}, ratio {RATIO}) -> export with parity", "",
             f"{len(rows)} models: {counts['worked']} worked, {counts['refused']} refused, {counts['failed']} failed, {counts['pending']} not finished (see detail). "
             f"Tiny run: {CLASSES} classes x {PER_CLASS} images, 1 training + 1 fine-tuning epoch, smallest input "
             "each model accepts; it checks that the pipeline runs, not accuracy.", "",
             "| model | input px | outcome | params before -> after | MACs before -> after | detail |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["outcome"] == "worked":
            detail = f"parity max abs diff {r['parity_max_abs_diff']:.1e}" + (", SE folded" if r.get("fold") else "")
            p, m = r["params"], r["macs"]
            lines.append(f"| {r['name']} | {r['img_size']} | worked | {p['before']:,} -> {p['after']:,} | "
                         f"{m['before']:,} -> {m['after']:,} | {detail} |")
        else:
            pending = "passed preflight; pipeline not run yet" if "img_size" in r else "not run yet"
            detail = r.get("reason") or (f"{r.get('stage')}: {r.get('error')}" if r["outcome"] == "failed" else pending)
            lines.append(f"| {r['name']} | {r.get('img_size', '-')} | {r['outcome']} | | | {detail} |")
    return "\n".join(lines) + "\n"


def _load_rows(rows_file: Path) -> dict:
    rows = {}
    if rows_file.exists():
        for line in rows_file.read_text().splitlines():
            r = json.loads(line)
            rows[r["name"]] = r  # later lines (pipeline results) replace earlier (preflight) ones
    return rows


def _committed(args) -> dict:
    """Finished rows of the results file (a run cut short commits its table with rows "pending")."""
    path = args.results_dir / "tv_sweep.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    return {r["name"]: r for r in rows if r["outcome"] != "pending" or "img_size" in r}


def main(argv: list[str] | None = None) -> None:
    import torchvision.models as tvm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated torchvision names (default: all)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/tv_sweep"))
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--resume", action="store_true",
                   help="keep the finished rows of <results-dir>/tv_sweep.json and <work-dir>/rows.jsonl; run the rest")
    p.add_argument("--table-only", action="store_true", help="with --resume: rewrite the results files, run nothing")
    p.add_argument("--rerun-failed", action="store_true", help="with --resume: run the failed rows again (after a fix)")
    args = p.parse_args(argv)
    args.quick, args.recipe, args.seeds = False, "v2", "0"
    args.data = f"rtdeploy sample ({CLASSES} classes x {PER_CLASS} images)"
    names = tvm.list_models(module=tvm)  # the table always lists every classifier; --only picks what runs
    to_run = [n for n in args.only.split(",") if n] if args.only else names
    args.work_dir.mkdir(parents=True, exist_ok=True)
    data, rows_file = tiny_folder(args.work_dir / "data"), args.work_dir / "rows.jsonl"
    if not args.resume:
        rows_file.unlink(missing_ok=True)
    done = _committed(args) if args.resume else {}
    done.update(_load_rows(rows_file))
    if args.rerun_failed:
        done = {n: r for n, r in done.items() if not (r["outcome"] == "failed" and n in to_run)}
    settings = {"criterion": CRITERION, "ratio": RATIO, "classes": CLASSES, "per_class": PER_CLASS,
                "epochs": 1, "finetune_epochs": 1, "candidate_sizes": list(CANDIDATE_SIZES)}

    def record(row: dict) -> None:
        done[row["name"]] = row
        with rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"{row['name']}: {row['outcome']} ({row['seconds']:.0f} s) {row.get('reason') or row.get('error') or ''}")
        rows = [done.get(n, {"name": n, "outcome": "pending"}) for n in names]  # results after every model
        write_results(args, "tv_sweep", {"provenance": provenance(args, settings), "rows": rows}, _markdown(rows))

    if args.table_only:  # keeps the provenance of the run that produced the rows
        rows = [done.get(n, {"name": n, "outcome": "pending"}) for n in names]
        old = args.results_dir / "tv_sweep.json"
        prov = json.loads(old.read_text())["provenance"] if old.exists() else provenance(args, settings)
        write_results(args, "tv_sweep", {"provenance": prov, "rows": rows}, _markdown(rows))
        return
    order = sorted(to_run, key=_size)  # small models first: a long run reports most rows early
    for name in order:  # phase 1, cheap: which architectures compress refuses up front
        if name not in done:
            record(preflight_one(name, data, args.work_dir / name))
    for name in order:  # phase 2: the whole pipeline for the others
        if done[name]["outcome"] == "pending" and "img_size" in done[name]:
            record(pipeline_one(dict(done[name]), data, args.work_dir / name))


if __name__ == "__main__":
    main()
