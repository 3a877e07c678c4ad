"""Experiment 1: pruning criteria x fine-tuning loss at equal MACs (the paper's main table, on UC Merced).

For each seed (split + init + fine-tune), one SE-ResNet18 is trained from scratch (benchmarks.common.Recipe)
and every method prunes that same model at local ratio 0.7, round-to 8 (so every method yields the
same widths, params and MACs), then fine-tunes with the same budget. Accuracy is reported as mean ±
std over seeds, both at the best test epoch (the paper's protocol: it selects on test) and at the
last epoch (free of that selection); paired differences against CAP + AML say which gaps are
outside the seed-to-seed noise (95 % Student t interval over seeds).

    python -m benchmarks.criteria --data ../shared/data/ucmerced            # full: ~1 h on 2 cores
    python -m benchmarks.criteria --data ../shared/data/ucmerced --quick    # minutes
"""
from __future__ import annotations

from dataclasses import asdict

from . import common

METHODS = [("cap", "aml", False), ("cap", "ce", False), ("cap", "aml", True),
           ("bn", "aml", False), ("bn", "ce", False), ("l1", "aml", False), ("l1", "ce", False),
           ("taylor", "aml", False), ("taylor", "ce", False), ("fpgm", "aml", False), ("fpgm", "ce", False),
           ("random", "aml", False), ("random", "ce", False)]
REFERENCE = "cap + aml"


def label(criterion: str, loss: str, distill: bool) -> str:
    return f"{criterion} + {loss}" + (" + kd" if distill else "")


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--methods", default=None, help="subset, e.g. 'cap:aml,bn:ce,cap:aml:kd'")
    args = p.parse_args(argv)
    r = common.recipe(args)
    methods = _methods(args.methods)
    runs: dict[str, list[dict]] = {label(*m): [] for m in methods}
    bases = []
    for seed in common.seeds(args):
        base = common.base_checkpoint(args, r, seed)
        bases.append(base)
        for m in methods:
            rep = common.compress_run(args, r, base, seed, criterion=m[0], loss=m[1], distill=m[2])
            runs[label(*m)].append(_summary(rep, seed))
    rows = [_row(name, rs) for name, rs in runs.items()]
    ref = runs.get(REFERENCE)
    comparisons = {name: {"best": common.paired([x["finetuned"] for x in ref], [x["finetuned"] for x in rs]),
                          "last": common.paired([x["finetuned_last"] for x in ref], [x["finetuned_last"] for x in rs])}
                   for name, rs in runs.items() if ref and name != REFERENCE}
    latency = _latency(bases[0], runs)
    payload = {"provenance": common.provenance(args, {"recipe": asdict(r), "ratio": 0.7, "scope": "local",
                                                      "round_to": 8, "methods": [label(*m) for m in methods]}),
               "rows": rows, "comparisons_vs_cap_aml": comparisons, "latency": latency, "runs": runs}
    stem = common.write_results(args, "criteria", payload, _markdown(rows, comparisons, latency, r))
    _plot(rows, f"{stem}.png")


def _methods(spec: str | None):
    if not spec:
        return METHODS
    out = []
    for item in spec.split(","):
        parts = item.split(":")
        out.append((parts[0], parts[1], len(parts) > 2 and parts[2] == "kd"))
    return out


def _summary(rep: dict, seed: int) -> dict:
    acc = rep["accuracy"]
    fold = rep.get("fold") or {}
    return {"seed": seed, "original": acc["original"], "folded": acc["folded"], "pruned": acc["pruned"],
            "finetuned": acc["finetuned"], "finetuned_last": common.last_epoch_test(rep),
            "params": rep["params"]["after"], "macs": rep["macs"]["after"], "params_before": rep["params"]["before"],
            "macs_before": rep["macs"]["before"], "gamma_cv_before": fold.get("gamma_cv_before"),
            "gamma_cv_after": fold.get("gamma_cv_after"), "finetune_seconds": rep["seconds"].get("finetune")}


def _row(name: str, rs: list[dict]) -> dict:
    def col(key):
        return [x[key] for x in rs if x[key] is not None]
    return {"method": name, "seeds": len(rs), "original": common.mean_std(col("original")),
            "folded": common.mean_std(col("folded")), "pruned": common.mean_std(col("pruned")),
            "finetuned": common.mean_std(col("finetuned")), "finetuned_last": common.mean_std(col("finetuned_last")),
            "finetuned_pm": common.pm(col("finetuned")), "finetuned_last_pm": common.pm(col("finetuned_last")),
            "original_pm": common.pm(col("original")), "folded_pm": common.pm(col("folded")),
            "pruned_pm": common.pm(col("pruned")), "params": rs[0]["params"], "macs": rs[0]["macs"],
            "params_before": rs[0]["params_before"], "macs_before": rs[0]["macs_before"]}


def _latency(base, runs) -> dict:
    """ORT CPU latency (batch 1, 1 thread, isolated) of the original and of the pruned architecture
    (all methods share its widths at local ratio 0.7 with round-to 8)."""
    from rtdeploy.bench import BenchConfig, bench_models

    pruned = base.with_name(f"{base.stem}_cap_aml_r0.7_rt8_local.pt")
    if not pruned.exists():
        return {}
    common.log("latency of the original and pruned architectures")
    report = bench_models([base, pruned], BenchConfig(batch_sizes=(1,), threads=(1,), warmup=20, runs=200))
    return {name: {"p50_ms": m.results[0].latency_ms.p50, "speedup": m.results[0].speedup.median, "mac_ratio": m.mac_ratio}
            for name, m in zip(("original", "pruned"), report.models)}


def _markdown(rows, comparisons, latency, r) -> str:
    base = rows[0]
    lat = latency or {}
    head = [f"# Criteria x loss at ratio 0.7 (local, round-to 8), UC Merced 64x64, {base['seeds']} seed(s)", "",
            f"Unpruned SE-ResNet18: {base['original_pm']} % ({base['params_before'] / 1e6:.2f} M params, "
            f"{base['macs_before'] / 1e6:.1f} M MACs"
            + (f", {lat['original']['p50_ms']:.2f} ms ORT CPU batch 1, 1 thread" if lat else "") + "). "
            f"Every pruned model: {base['params'] / 1e6:.2f} M params, {base['macs'] / 1e6:.1f} M MACs "
            f"({base['macs_before'] / base['macs']:.1f}x fewer)"
            + (f", {lat['pruned']['p50_ms']:.2f} ms ({lat['pruned']['speedup']:.1f}x faster)" if lat else "") + ".",
            common.describe(r), "",
            "| method | folded (before pruning) | pruned (before fine-tuning) | fine-tuned, best epoch | fine-tuned, last epoch | last-epoch diff vs cap + aml (95 % CI) |",
            "|---|---|---|---|---|---|"]
    for row in rows:
        c = comparisons.get(row["method"], {}).get("last")
        diff = "reference" if c is None else (
            f"{100 * -c['diff']:+.2f} ± {100 * c['ci95']:.2f}" + (" **outside noise**" if c["outside_noise"] else " (within noise)"))
        head.append(f"| {row['method']} | {row['folded_pm']} | {row['pruned_pm']} | {row['finetuned_pm']} | "
                    f"{row['finetuned_last_pm']} | {diff} |")
    head += ["", "Accuracies in %, mean ± std over seeds. 'Best epoch' selects on the test split as the paper "
             "does; 'last epoch' is free of that selection. The diff column is the method minus cap + aml, "
             "paired by seed."]
    return "\n".join(head) + "\n"


def _plot(rows, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [100 * r["finetuned"][0] for r in rows], 0.4,
           yerr=[100 * r["finetuned"][1] for r in rows], label="best epoch", capsize=3)
    ax.bar([x + 0.2 for x in xs], [100 * r["finetuned_last"][0] for r in rows], 0.4,
           yerr=[100 * r["finetuned_last"][1] for r in rows], label="last epoch", capsize=3)
    ax.axhline(100 * rows[0]["original"][0], color="k", ls="--", lw=1, label="unpruned")
    ax.set_xticks(list(xs), names, rotation=35, ha="right")
    ax.set_ylabel("test accuracy (%)")
    lo = min(100 * r["finetuned_last"][0] for r in rows)
    ax.set_ylim(max(0, lo - 10), 100)
    ax.set_title("Pruned at ratio 0.7 (10x fewer MACs), UC Merced 64x64")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
