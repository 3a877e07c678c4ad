"""Experiment 2: pruning-rate sweep. Ratios 0.3-0.9 for CAP + AML and a baseline criterion:
accuracy vs MACs vs ONNX Runtime latency, from the same trained model (seed 0 by default).

    python -m benchmarks.sweep --data ../shared/data/ucmerced --baseline l1
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from . import common

RATIOS = (0.3, 0.5, 0.7, 0.8, 0.9)


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--baseline", default=None,
                   help="criterion compared with cap (same loss, aml); default: the best non-cap criterion "
                        "with aml in results/criteria.json (last-epoch accuracy), else l1")
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    args = p.parse_args(argv)
    args.seeds = args.seeds.split(",")[0]
    seed, r = common.seeds(args)[0], common.recipe(args)
    ratios = [float(x) for x in args.ratios.split(",")]
    args.baseline = args.baseline or _best_baseline(args)
    base = common.base_checkpoint(args, r, seed)
    points, paths = [], [base]
    for criterion in ("cap", args.baseline):
        for ratio in ratios:
            rep = common.compress_run(args, r, base, seed, criterion=criterion, loss="aml", ratio=ratio)
            paths.append(rep["checkpoint"])
            points.append({"criterion": criterion, "ratio": ratio, "params": rep["params"]["after"],
                           "macs": rep["macs"]["after"], "macs_before": rep["macs"]["before"],
                           "original": rep["accuracy"]["original"], "pruned": rep["accuracy"]["pruned"],
                           "finetuned": rep["accuracy"]["finetuned"],
                           "finetuned_last": rep["accuracy"].get("finetuned_last")})
    latency = _latency(paths, args)
    for pt, lat in zip(points, latency[1:]):
        pt.update(lat)
    payload = {"provenance": common.provenance(args, {"recipe": asdict(r), "ratios": ratios, "baseline": args.baseline,
                                                      "loss": "aml", "scope": "local", "round_to": 8}),
               "original": latency[0], "points": points}
    stem = common.write_results(args, "sweep", payload, _markdown(points, latency[0], r))
    _plot(points, latency[0], f"{stem}.png")


def _best_baseline(args) -> str:
    path = Path(f"{common.results_stem(args, 'criteria')}.json")
    if not path.exists():
        return "l1"
    rows = json.loads(path.read_text())["rows"]
    rows = [r for r in rows if not r["method"].startswith("cap") and r["method"].endswith("+ aml")]
    best = max(rows, key=lambda r: r["finetuned_last"][0], default=None)
    return best["method"].split(" + ")[0] if best else "l1"


def _latency(paths, args) -> list[dict]:
    """ORT CPU p50 latency at batch 1, 1 thread, each model in its own process."""
    from rtdeploy.bench import BenchConfig, bench_models

    common.log(f"latency of {len(paths)} models")
    report = bench_models(paths, BenchConfig(batch_sizes=(1,), threads=(1,), warmup=20, runs=20 if args.quick else 200))
    return [{"p50_ms": m.results[0].latency_ms.p50, "speedup": m.results[0].speedup.median, "mac_ratio": m.mac_ratio,
             "accuracy_original": None} for m in report.models]


def _markdown(points, original, r) -> str:
    lines = ["# Pruning-rate sweep, UC Merced 64x64 (local scope, round-to 8, fine-tuned with AML)", "",
             f"Unpruned: {100 * points[0]['original']:.2f} %, {points[0]['macs_before'] / 1e6:.1f} M MACs, "
             f"{original['p50_ms']:.2f} ms (ORT CPU, batch 1, 1 thread).", "", common.describe(r), "",
             "| criterion | ratio | params | MACs | MAC ratio | p50 ms | speed-up | pruned (before FT) | fine-tuned best | fine-tuned last |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['criterion']} | {p['ratio']} | {p['params'] / 1e6:.2f} M | {p['macs'] / 1e6:.1f} M | "
                     f"{p['macs_before'] / p['macs']:.1f}x | {p['p50_ms']:.2f} | {p['speedup']:.1f}x | "
                     f"{100 * p['pruned']:.1f} % | {100 * p['finetuned']:.2f} % | {100 * p['finetuned_last']:.2f} % |")
    return "\n".join(lines) + "\n"


def _plot(points, original, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for crit, marker in zip(dict.fromkeys(p["criterion"] for p in points), "os^"):
        pts = [p for p in points if p["criterion"] == crit]
        macs = [p["macs"] / 1e6 for p in pts]
        a1.plot(macs, [100 * p["finetuned_last"] for p in pts], marker=marker, label=f"{crit} + aml")
        a2.plot(macs, [p["p50_ms"] for p in pts], marker=marker, label=f"{crit} + aml")
        for p, m in zip(pts, macs):
            a1.annotate(f"{p['ratio']}", (m, 100 * p["finetuned_last"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    full = points[0]["macs_before"] / 1e6
    a1.axhline(100 * points[0]["original"], color="k", ls="--", lw=1, label="unpruned")
    a2.scatter([full], [original["p50_ms"]], color="k", label="unpruned")
    for ax, ylabel in ((a1, "test accuracy, last epoch (%)"), (a2, "ORT CPU p50 latency, batch 1 (ms)")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels collide on a narrow range
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("MACs per image (M, log)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Pruning-rate sweep (labels: ratio)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
