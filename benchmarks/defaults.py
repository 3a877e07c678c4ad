"""Issue 11: what the plain commands give, run exactly as a user runs them.

`rtdeploy train --data D --out m.pt` and `rtdeploy compress m.pt --data D --out p.pt` with no
tuning flags (recipe "default"), 3 seeds; `compress --ratio 0.8`; the paper's protocol as its
own rows (`--recipe paper` for both commands); other criteria at the default budget
(`--criterion X`); and the defaults at 32 px and on a half-size subset, to show they are not
tuned to one setting. Every accuracy is on the test split at the epoch the command kept
(selected on validation, except the paper rows, which select on test and are labelled so).

    python -m benchmarks.defaults --data ../shared/data/ucmerced [--device cuda] [--jobs 8]

Commands run as subprocesses of the real CLI, `--jobs` at a time; each finished command is
cached in --runs-dir (re-running skips it). Wall times are the commands' own measurements
(train: the training loop; compress: its fine-tuning stage), so the fine-tuning budget is
reported as a ratio to the parent's training time measured on the same machine and load.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import common

VARIANTS = ("32px", "half", "e150", "stages")


@dataclass
class Job:
    name: str
    argv: list[str]
    out: Path
    after: list[str] = field(default_factory=list)


def _args():
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="passed to train/compress (not a tuning flag)")
    p.add_argument("--jobs", type=int, default=1, help="commands run at once")
    p.add_argument("--criteria", default="bn,l1,l2,taylor,fpgm,lamp,random",
                   help="the other criteria, each at the default budget (default: all of them)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="32px, half, e150 (--ratio 0.8 --epochs "
                   "150: the fine-tuning length before it followed the ratio) and/or stages (the optional "
                   "--prune-steps 3 and --sparsity-epochs 10 on top of the defaults); empty: none")
    p.add_argument("--arch", default=None, help="only for smoke tests of this script (e.g. tiny_se): the "
                   "benchmark itself uses the commands' default architecture")
    p.add_argument("--ran-on", default=None, help="with --collect-only: the machine the runs ran on, when it is "
                   "not this one (its package versions are read from the runs' own JSON)")
    p.add_argument("--skip-paper", action="store_true", help="leave out the --recipe paper rows")
    p.add_argument("--collect-only", action="store_true", help="only summarise the runs already in --runs-dir")
    p.add_argument("--only", default="", help="run only these jobs (comma-separated names such as parent32_s0,"
                   "default70_32px_s0; the parents they need are added): for a machine that cannot run them all")
    p.set_defaults(runs_dir=Path("runs/defaults"))
    return p.parse_args()


def _half(data: str, dest: Path) -> str:
    """The first half (sorted) of every class folder, copied (links would meet the symlink rule)."""
    if dest.exists():
        return str(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for cls in sorted(p for p in Path(data).iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.is_file())
        (tmp / cls.name).mkdir(parents=True)
        for f in files[: len(files) // 2]:
            shutil.copy2(f, tmp / cls.name / f.name)
    tmp.rename(dest)
    return str(dest)


def plan(args, runs: Path) -> list[Job]:
    rt = [sys.executable, "-m", "rtdeploy"]
    dev = ["--device", args.device] + (["--epochs", "2"] if args.quick else [])  # --quick: a smoke run
    arch = ["--arch", args.arch] if args.arch else []
    jobs: list[Job] = []

    def train(name, data, *extra):
        out = runs / f"{name}.pt"
        jobs.append(Job(name, [*rt, "train", "--data", data, "--out", str(out), *dev, *arch, *extra], out))

    def compress(name, parent, data, *extra):
        out = runs / f"{name}.pt"
        jobs.append(Job(name, [*rt, "compress", str(runs / f"{parent}.pt"), "--data", data, "--out", str(out),
                               *dev, *extra], out, [parent]))

    data = args.data
    variants = [v for v in args.variants.split(",") if v]
    criteria = [c for c in args.criteria.split(",") if c]

    def table(s: int, tag: str, parent: str, paper: str, *train_extra: str) -> None:
        """One setting's rows: parent, defaults at 0.7 and 0.8, the paper's protocol, other criteria.
        `train_extra` only for train: compress takes the image size from its checkpoint."""
        seed = ["--seed", str(s)]
        train(f"{parent}_s{s}", data, *seed, *train_extra)
        compress(f"default70{tag}_s{s}", f"{parent}_s{s}", data, *seed)
        compress(f"default80{tag}_s{s}", f"{parent}_s{s}", data, "--ratio", "0.8", *seed)
        if "e150" in variants:  # the plain 0.8 run fine-tunes 225 epochs; this row is the old fixed 150
            compress(f"default80e150{tag}_s{s}", f"{parent}_s{s}", data, "--ratio", "0.8", "--epochs", "150", *seed)
        if not args.skip_paper:
            train(f"{paper}_s{s}", data, "--recipe", "paper", *seed, *train_extra)
            compress(f"paper70{tag}_s{s}", f"{paper}_s{s}", data, "--recipe", "paper", *seed)
        for c in criteria:
            compress(f"{c}70{tag}_s{s}", f"{parent}_s{s}", data, "--criterion", c, *seed)
        if "stages" in variants:  # the optional stages around pruning, each on top of the defaults
            compress(f"steps70{tag}_s{s}", f"{parent}_s{s}", data, "--prune-steps", "3", *seed)
            compress(f"sparse70{tag}_s{s}", f"{parent}_s{s}", data, "--sparsity-epochs", "10", *seed)

    for s in common.seeds(args):
        table(s, "", "parent", "paper")
        if "32px" in variants:  # the whole table again at 32 px: the issue's "other setting"
            table(s, "_32px", "parent32", "paper32", "--img-size", "32")
        if "half" in variants:
            half = _half(data, runs / "half_data")
            train(f"parenthalf_s{s}", half, "--seed", str(s))
            compress(f"default70_half_s{s}", f"parenthalf_s{s}", half, "--seed", str(s))
    return jobs


def _only(jobs: list[Job], names: str) -> list[Job]:
    wanted = {n for n in names.split(",") if n}
    if not wanted:
        return jobs
    unknown = wanted - {j.name for j in jobs}
    if unknown:
        raise SystemExit(f"--only: no job named {', '.join(sorted(unknown))}; jobs: {', '.join(j.name for j in jobs)}")
    wanted |= {p for j in jobs if j.name in wanted for p in j.after}
    return [j for j in jobs if j.name in wanted]


def run_all(jobs: list[Job], n: int) -> None:
    """Parents first (compress jobs wait for theirs), at most `n` commands at once."""
    done = {j.name for j in jobs if j.out.exists() and j.out.with_suffix(".json").exists()}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1" if n > 1 else "")}
    env = {k: v for k, v in env.items() if v != ""}

    def one(job: Job) -> None:
        common.log(f"start {job.name}")
        log = job.out.with_suffix(".log")
        with open(log, "w") as fh:
            rc = subprocess.run(job.argv + ["--force"], stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        common.log(f"{job.name}: exit {rc}" + ("" if rc == 0 else f" (see {log})"))

    for wave in ([j for j in jobs if not j.after], [j for j in jobs if j.after]):
        with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
            list(pool.map(one, [j for j in wave if j.name not in done]))


def _read(runs: Path, name: str) -> dict | None:
    f = runs / f"{name}.json"
    return json.loads(f.read_text()) if f.exists() else None


def _training_seconds(report: dict) -> float:
    """All the training compress did: fine-tuning, plus sparsity training and the fine-tuning
    between progressive pruning steps when those options ran."""
    return sum(report["seconds"].get(k, 0.0) for k in ("finetune", "step_finetune", "sparsify"))


def collect(args, runs: Path) -> dict:
    seeds = common.seeds(args)
    rows: dict[str, dict] = {}

    def parent_row(key, prefix, label):
        got = [(s, _read(runs, f"{prefix}_s{s}")) for s in seeds]
        got = [(s, r) for s, r in got if r]
        if got:
            rows[key] = {"label": label, "seeds": [s for s, _ in got],
                         "test": [r["test_accuracy"] for _, r in got], "seconds": [r["seconds"] for _, r in got],
                         "selected_on": got[0][1]["selected_on"], "macs": got[0][1]["macs"],
                         "params": got[0][1]["params"], "kept_epoch": [r["best_epoch"] for _, r in got],
                         "epochs": sorted({r["config"]["epochs"] for _, r in got})}

    def child_row(key, prefix, parent_prefix, label, variant_of=None):
        """`variant_of`: the plain compress row key this run varies (another criterion, an optional
        stage), paired with it seed by seed; `name`, the criterion or stage, for the plot."""
        got = []
        for s in seeds:
            c, p = _read(runs, f"{prefix}_s{s}"), _read(runs, f"{parent_prefix}_s{s}")
            if c and p:
                got.append((s, c, p))
        if got:
            test = [c["accuracy"]["finetuned"] for _, c, _ in got]
            parent = [p["test_accuracy"] for _, _, p in got]
            rows[key] = {"label": label, "seeds": [s for s, _, _ in got], "test": test, "parent": parent,
                         **({"variant_of": variant_of[0], "name": variant_of[1]} if variant_of else {}),
                         "vs_parent": common.paired(test, parent),
                         "seconds": [_training_seconds(c) for _, c, _ in got],
                         "time_vs_parent": [_training_seconds(c) / p["seconds"] for _, c, p in got],
                         "criterion": got[0][1]["criterion"], "ratio": got[0][1]["ratio"],
                         "macs": got[0][1]["macs"]["after"], "params": got[0][1]["params"]["after"],
                         "macs_before": got[0][1]["macs"]["before"],
                         "selected_on": got[0][1].get("selected_on", "test"),
                         "kept_epoch": [c["finetune"]["best_epoch"] for _, c, _ in got],
                         "epochs": sorted({c["settings"]["train"]["epochs"] for _, c, _ in got})}

    criteria = [c for c in args.criteria.split(",") if c]
    for tag, parent, paper, px in (("", "parent", "paper", ""), ("_32px", "parent32", "paper32", " (32 px)")):
        parent_row(f"train{tag}", parent, f"rtdeploy train (defaults){px}")
        parent_row(f"train_paper{tag}", paper, f"rtdeploy train --recipe paper{px}")
        child_row(f"compress70{tag}", f"default70{tag}", parent, f"rtdeploy compress (defaults, ratio 0.7){px}")
        child_row(f"compress80{tag}", f"default80{tag}", parent, f"rtdeploy compress --ratio 0.8{px}")
        child_row(f"compress80_e150{tag}", f"default80e150{tag}", parent,
                  f"rtdeploy compress --ratio 0.8 --epochs 150 (the length before it followed the ratio){px}")
        child_row(f"compress70_paper{tag}", f"paper70{tag}", paper,
                  f"rtdeploy compress --recipe paper (on the paper parent){px}")
        for c in criteria:
            child_row(f"criterion_{c}{tag}", f"{c}70{tag}", parent, f"rtdeploy compress --criterion {c}{px}",
                      (f"compress70{tag}", c))
        child_row(f"steps{tag}", f"steps70{tag}", parent, f"rtdeploy compress --prune-steps 3 (+20 epochs between){px}",
                  (f"compress70{tag}", "steps"))
        child_row(f"sparse{tag}", f"sparse70{tag}", parent, f"rtdeploy compress --sparsity-epochs 10{px}",
                  (f"compress70{tag}", "sparse"))
    parent_row("train_half", "parenthalf", "rtdeploy train (half-size subset)")
    child_row("compress70_half", "default70_half", "parenthalf", "rtdeploy compress (half-size subset)")
    _pair_with_defaults(rows)
    return rows


def _pair_with_defaults(rows: dict) -> None:
    """Each variant of the 0.7 defaults (another criterion, an optional stage) against the plain
    `compress` of the same seeds and parents: the comparison the criteria table is about, paired
    so the parents' seed-to-seed spread cancels."""
    for row in rows.values():
        if row.get("variant_of") not in rows:
            continue
        base = dict(zip(rows[row["variant_of"]]["seeds"], rows[row["variant_of"]]["test"]))
        both = [(s, t, base[s]) for s, t in zip(row["seeds"], row["test"]) if s in base]
        if both:
            row["vs_default"] = {**common.paired([t for _, t, _ in both], [b for _, _, b in both]),
                                 "seeds": [s for s, _, _ in both]}


def markdown(rows: dict, prov: dict) -> str:
    m = prov["machine"]
    lines = ["# The plain commands (issue 11): defaults vs. the paper's protocol", "",
             f"UC Merced ({prov['data']}), SE-ResNet18, seeds {prov['seeds']}, run on "
             f"{m.get('ran_on') or m.get('gpu') or m['cpu']} "
             f"(device `{prov['settings']['device']}`). Test accuracy (%) of the model each command kept, mean ± std over "
             "seeds; 'vs parent' is the paired difference with its 95 % Student t half-width (inf: one seed). Time: the "
             "fine-tuning stage's wall time over the parent's training time, same machine; comparable only where both "
             "ran under the same load.", "",
             "| command | seeds | kept by | test accuracy | vs parent | vs plain compress, paired | MACs | params | "
             "time vs parent, per seed | epochs | kept epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows.values():
        vs, vs_default = _diff(row.get("vs_parent")), _diff(row.get("vs_default"))
        if "vs_default" in row and row["vs_default"]["seeds"] != row["seeds"]:  # fewer plain runs than this row's
            vs_default += f" (seeds {', '.join(map(str, row['vs_default']['seeds']))})"
        elif "variant_of" in row and "vs_default" not in row:
            vs_default = "no plain compress on these seeds"
        t = ", ".join(f"{r:.3f}" for r in row["time_vs_parent"]) if "time_vs_parent" in row else "-"
        sel = row["selected_on"] + (" (optimistic)" if row["selected_on"].startswith("test") else "")
        fewer = f" ({row['macs_before'] / row['macs']:.1f}x fewer)" if "macs_before" in row else ""
        lines.append(f"| {row['label']} | {', '.join(map(str, row['seeds']))} | {sel} | {common.pm(row['test'])} | "
                     f"{vs} | {vs_default} | {row['macs'] / 1e6:.1f} M{fewer} | {row['params'] / 1e6:.2f} M | {t} | "
                     f"{', '.join(map(str, row['epochs']))} | {', '.join(str(e) for e in row['kept_epoch'])} |")
    lines += ["", "'vs plain compress, paired': a criterion or optional stage minus `rtdeploy compress` with no "
              "flags (CAP + AML at 0.7) on the same seeds and parents; **outside noise** marks a 95 % interval "
              "that excludes 0.", "", f"Command: `{prov['command']}`"]
    return "\n".join(lines) + "\n"


def _diff(d: dict | None) -> str:
    if d is None:
        return "-"
    return f"{100 * d['diff']:+.2f} ± {100 * d['ci95']:.2f}" + (" **outside noise**" if d["outside_noise"] else "")


def plot(rows: dict, path: str) -> bool:
    """Per image size, each seed's test accuracy for the plain compress and every criterion at 0.7,
    with the parents' mean as a line: the criteria table at a glance. A size is drawn only with its
    plain compress (the reference) and parents. False: nothing to draw."""
    panels = []
    for tag, title in (("", "64 px"), ("_32px", "32 px")):
        base = f"compress70{tag}"
        if base in rows and f"train{tag}" in rows:
            items = [("cap (plain)", rows[base])] + [(r["name"], r) for k, r in rows.items()
                                                     if k.startswith("criterion_") and r.get("variant_of") == base]
            panels.append((title, rows[f"train{tag}"], items))
    if not panels:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({s for _, _, items in panels for _, r in items for s in r["seeds"]})
    slot = {s: i for i, s in enumerate(seeds)}  # a colour and a small x offset per seed: pairs stay visible
    width = 0.5 / max(1, len(seeds))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, parent, items) in zip(axes[0], panels):
        seen = set()
        for x, (_, row) in enumerate(items):
            for s, t in zip(row["seeds"], row["test"]):
                i = slot[s]
                ax.scatter([x + (i - (len(seeds) - 1) / 2) * width], [100 * t], s=18, color=f"C{2 + i % 8}",
                           marker="os^D"[i // 8 % 4], zorder=3, label=None if s in seen else f"seed {s}")
                seen.add(s)
            ax.hlines(100 * sum(row["test"]) / len(row["test"]), x - 0.3, x + 0.3, color="C1", lw=2,
                      label="mean" if x == 0 else None)
        ax.set_xlim(-0.7, len(items) - 0.3)
        ax.axhline(100 * sum(parent["test"]) / len(parent["test"]), color="k", ls="--", lw=1, label="parent (mean)")
        ax.set_xticks(range(len(items)), [name for name, _ in items], rotation=30, ha="right")
        ax.set_title(f"ratio 0.7, {title}: each seed, and the mean")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    args = _args()
    runs = common.runs_dir(args)
    jobs = _only(plan(args, runs), args.only)
    if not args.collect_only:
        run_all(jobs, args.jobs)
    rows = collect(args, runs)
    prov = common.provenance(args, {"device": args.device, "jobs": args.jobs, "criteria": args.criteria,
                                    "variants": args.variants, "recipes": "rtdeploy/defaults.py"})
    if args.device != "cpu":
        import torch

        if torch.cuda.is_available():
            prov["machine"]["gpu"] = torch.cuda.get_device_name(0)
    if args.ran_on:
        prov["machine"] = {**prov["machine"], "ran_on": args.ran_on, "summarised_on": prov["machine"]["cpu"]}
        first = next(iter(runs.glob("parent_s*.json")), None)
        prov["versions"] = json.loads(first.read_text())["versions"] if first else {}
    payload = {"provenance": prov, "rows": rows}
    stem = common.write_results(args, "defaults", payload, markdown(rows, prov))
    try:
        drawn = plot(rows, f"{stem}.png")
    except ImportError as e:  # matplotlib is the optional [plot] extra; the table is written already
        common.log(f"no plot: {e} (pip install -e '.[plot]')")
    else:
        if drawn:
            common.log(f"wrote {stem}.png")


if __name__ == "__main__":
    main()
