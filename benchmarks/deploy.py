"""Experiment 4 (issues 4 and 13): what pruning, channel rounding and INT8 buy under ONNX Runtime
on CPU, measured as `rtdeploy bench` measures: interleaved rounds, speed-up = median of paired
per-round latency ratios with a 95 % interval.

original vs CAP+AML-pruned at ratio 0.7 with --round-to 1, 8, 16, 32 and auto (the choice for this
CPU, see rtdeploy/prune/target.py), vs pruned + INT8 and the original in INT8; batch 1 and 32,
1 thread; speed-up divided by the MAC ratio (1.0 = the whole compute saving became time).
Issue 13's target, for the round-to-auto model: >= 0.9 x MAC ratio at batch 1, >= 1.0 x at 32.

    python -m benchmarks.deploy --data ../shared/data/ucmerced
    python -m benchmarks.deploy --data ../shared/data/ucmerced --latency-only   # briefly trained models

--latency-only trains the base model and fine-tunes the pruned ones for one epoch on 12 images
per class (in their own --runs-dir): latency depends on the widths, not on the weights, so the
speed-ups are the same as with fully trained models, but the accuracy columns mean nothing.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from rtdeploy.bench import BenchConfig, bench_models
from rtdeploy.export import ExportConfig, export_checkpoint
from rtdeploy.export.pipeline import int8_path
from rtdeploy.prune.target import choose_round_to

from . import common

ROUND_TO = (1, 8, 16, 32)
TARGET_B1, TARGET_B32 = 0.9, 1.0


def _pruned(args, r, base, seed) -> dict[int, Path]:
    out = {}
    for rt in ROUND_TO:
        common.compress_run(args, r, base, seed, criterion="cap", loss="aml", round_to=rt)
        out[rt] = common.runs_dir(args) / f"{base.stem}_cap_aml_r0.7_rt{rt}_local.pt"
    return out


def _models(args, base: Path, pruned: dict[int, Path], auto: int) -> tuple[dict, dict, list[str]]:
    """Export every checkpoint (INT8 copies of the original and the auto-rounded model)."""
    models, exports = {}, {}
    named = [("original", base, True)] + [(_name(rt, auto), pruned[rt], rt == auto) for rt in ROUND_TO]
    for name, ckpt, int8 in named:
        onnx_path = ckpt.with_suffix(".onnx")
        common.log(f"export {name}")
        cfg = ExportConfig(int8=int8, calib_data=args.data if int8 else None)
        exports[name] = asdict(export_checkpoint(ckpt, onnx_path, cfg, data=args.data))
        models[name] = onnx_path
        if int8:
            models[f"{name} int8"] = int8_path(onnx_path)
    order = ["original"] + [_name(rt, auto) for rt in ROUND_TO] + [f"{_name(auto, auto)} int8", "original int8"]
    return models, exports, order


def _name(rt: int, auto: int) -> str:
    return f"cap70 rt{rt}" + (" (auto)" if rt == auto else "")


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--seconds", type=float, default=0.5, help="timed seconds per model, batch size and round")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    p.add_argument("--latency-only", action="store_true",
                   help="briefly trained models (1 epoch, 12 images per class): speed-ups valid, accuracy not")
    args = p.parse_args(argv)
    args.seeds = args.seeds.split(",")[0]
    seed = common.seeds(args)[0]
    if args.latency_only:
        args.runs_dir = args.runs_dir.with_name(args.runs_dir.name + "-latency-only")
        r = common.recipe(args, epochs=1, ft_epochs=1, max_per_class=12)
    else:
        r = common.recipe(args)
    choice = choose_round_to("cpu")
    if choice.round_to not in ROUND_TO:
        raise SystemExit(f"round-to auto chose {choice.round_to}, which this benchmark does not build")
    base = common.base_checkpoint(args, r, seed)
    models, exports, order = _models(args, base, _pruned(args, r, base, seed), choice.round_to)
    cfg = BenchConfig(batch_sizes=(1, 32), threads=(1,), warmup=10, runs=1, seconds=0.1 if args.quick else args.seconds,
                      rounds=6 if args.quick else args.rounds)
    common.log("bench (interleaved rounds)")
    load_before = os.getloadavg()
    report = bench_models([models[n] for n in order], cfg, data=args.data,
                          on_progress=lambda done, total, label: common.log(f"{done}/{total} {label}") if done % 10 == 0 else None)
    load_after = os.getloadavg()
    report.environment["load_average"] = {"before": list(load_before), "after": list(load_after)}
    for row, name in zip(report.models, order):
        row.name = name
    rows = _rows(report)
    target = _target(rows, _name(choice.round_to, choice.round_to))
    payload = {"provenance": common.provenance(args, {"recipe": asdict(r), "bench": asdict(cfg),
                                                      "latency_only": args.latency_only}),
               "round_to_auto": asdict(choice), "accuracy_meaningful": not args.latency_only,
               "target": target, "rows": rows, "bench": asdict(report), "exports": exports}
    stem = common.write_results(args, "deploy", payload, _markdown(rows, target, report, choice, args.latency_only))
    from rtdeploy.plots import plot_bench

    plot_bench(report, f"{stem}.png", batch_size=1, threads=1)


def _rows(report) -> list[dict]:
    out = []
    for m in report.models:
        for res in m.results:
            s = res.speedup
            out.append({"model": m.name, "precision": m.precision, "params": m.params, "macs": m.macs,
                        "accuracy": m.accuracy, "size_bytes": m.size_bytes, "batch_size": res.batch_size,
                        "threads": res.threads, "p50_ms": res.latency_ms.p50, "p90_ms": res.latency_ms.p90,
                        "cv": res.cv, "throughput_ips": res.throughput_ips, "speedup": s.median,
                        "speedup_ci95": s.ci95, "unstable": s.unstable, "mac_ratio": m.mac_ratio,
                        "speedup_per_mac_ratio": s.median / m.mac_ratio if m.mac_ratio else None,
                        "speedup_per_mac_ratio_ci95": [v / m.mac_ratio for v in s.ci95] if s.ci95 and m.mac_ratio else None})
    return out


def _target(rows: list[dict], auto_name: str) -> dict:
    """Issue 13: the round-to-auto FP32 model, 1 thread: speed-up >= 0.9 x MAC ratio at batch 1 and
    >= 1.0 x at batch 32 (judged on the median; the interval is reported beside it)."""
    def row(batch):
        return next(r for r in rows if r["model"] == auto_name and r["batch_size"] == batch and r["threads"] == 1)
    b1, b32 = row(1), row(32)
    return {"model": auto_name, "mac_ratio": b1["mac_ratio"],
            "b1": {"speedup": b1["speedup"], "ci95": b1["speedup_ci95"], "per_mac_ratio": b1["speedup_per_mac_ratio"],
                   "met": b1["speedup_per_mac_ratio"] >= TARGET_B1},
            "b32": {"speedup": b32["speedup"], "ci95": b32["speedup_ci95"], "per_mac_ratio": b32["speedup_per_mac_ratio"],
                    "met": b32["speedup_per_mac_ratio"] >= TARGET_B32}}


def _ci(ci, fmt="{:.2f}") -> str:
    return f"[{fmt.format(ci[0])}-{fmt.format(ci[1])}]" if ci else "-"


def _markdown(rows: list[dict], target: dict, report, choice, latency_only: bool) -> str:
    env, st = report.environment, report.settings
    cpu = f"{env['machine']['cpu']} ({', '.join(env['machine']['cpu_flags'])})"
    lines = ["# Deployment: original vs pruned (round-to 1/8/16/32/auto) vs INT8 (ONNX Runtime, CPU)", "",
             f"CPU: {cpu}. {st['rounds']} interleaved rounds; in each, every model and batch size ran "
             f"{st['seconds']} s of timed runs after {st['warmup']} warm-up runs, alone in a fresh process. "
             "Latency: median of the round medians. Speed-up: median of the paired per-round ratios to the "
             "original, with its 95 % interval (order statistics); ! = interval wider than 10 %.", "",
             f"Round-to auto on this CPU: {choice.round_to} ({choice.reason}).", ""]
    load = env.get("load_average")
    if load:
        lines += [f"Machine load (1/5/15-min load average) before: {', '.join(f'{v:.1f}' for v in load['before'])}; "
                  f"after: {', '.join(f'{v:.1f}' for v in load['after'])} on {env['machine']['cores']} cores.", ""]
    if latency_only:
        lines += ["**Accuracy columns are not meaningful here**: the models were trained for one epoch on 12 images "
                  "per class (`--latency-only`); latency depends on the widths only, so speed-ups are valid.", ""]
    lines += ["| model | params | MACs | accuracy | batch | p50 ms | CV | images/s | speed-up [95 % CI] | MAC ratio | "
              "speed-up / MAC ratio [95 % CI] |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f} %" + (" (n/m)" if latency_only else "")
        per = "-" if r["speedup_per_mac_ratio"] is None else f"{r['speedup_per_mac_ratio']:.2f} {_ci(r['speedup_per_mac_ratio_ci95'])}"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['macs'] / 1e6:.1f} M | {acc} | {r['batch_size']} | "
                     f"{r['p50_ms']:.3f} | {100 * r['cv']:.1f} % | {r['throughput_ips']:.0f} | "
                     f"{r['speedup']:.2f}x {_ci(r['speedup_ci95'])}{' !' if r['unstable'] else ''} | {r['mac_ratio']:.2f} | {per} |")
    b1, b32 = target["b1"], target["b32"]
    lines += ["", f"Issue 13 target ({target['model']}, FP32, 1 thread, MAC ratio {target['mac_ratio']:.2f}): batch 1 speed-up "
              f"{b1['speedup']:.2f}x {_ci(b1['ci95'])} = {b1['per_mac_ratio']:.2f} x MAC ratio ({'met' if b1['met'] else 'NOT met'}: "
              f"needs >= {TARGET_B1}); batch 32 {b32['speedup']:.2f}x {_ci(b32['ci95'])} = {b32['per_mac_ratio']:.2f} x MAC ratio "
              f"({'met' if b32['met'] else 'NOT met'}: needs >= {TARGET_B32})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
