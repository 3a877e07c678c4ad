"""Experiment 4 (and issue 4's target): what pruning and INT8 buy under ONNX Runtime on CPU.

original vs CAP+AML-pruned at ratio 0.7 with round-to 1 and 8, vs pruned + INT8 (and the
original in INT8 for reference); batch 1 and 32, 1 and 2 threads; latency, throughput,
speed-up, and speed-up divided by the MAC ratio (1.0 = the full compute saving became time).
Each measurement runs alone in its own process (rtdeploy bench's default).

    python -m benchmarks.deploy --data ../shared/data/ucmerced
"""
from __future__ import annotations

from dataclasses import asdict

from rtdeploy.bench import BenchConfig, bench_models
from rtdeploy.export import ExportConfig, export_checkpoint
from rtdeploy.export.pipeline import int8_path

from . import common


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--runs", type=int, default=200, help="timed runs per measurement")
    args = p.parse_args(argv)
    args.seeds = args.seeds.split(",")[0]
    seed = common.seeds(args)[0]
    r = common.recipe(args)
    base = common.base_checkpoint(args, r, seed)
    pruned = {}
    for rt in (8, 1):
        common.compress_run(args, r, base, seed, criterion="cap", loss="aml", round_to=rt)
        pruned[rt] = base.with_name(f"{base.stem}_cap_aml_r0.7_rt{rt}_local.pt")
    models, exports = {}, {}
    for name, ckpt, int8 in (("original", base, True), ("cap70 rt8", pruned[8], True), ("cap70 rt1", pruned[1], False)):
        onnx_path = ckpt.with_suffix(".onnx")
        common.log(f"export {name}")
        cfg = ExportConfig(int8=int8, calib_data=args.data if int8 else None)
        exports[name] = asdict(export_checkpoint(ckpt, onnx_path, cfg, data=args.data))
        models[name] = onnx_path
        if int8:
            models[f"{name} int8"] = int8_path(onnx_path)
    order = ["original", "cap70 rt1", "cap70 rt8", "cap70 rt8 int8", "original int8"]
    cfg = BenchConfig(batch_sizes=(1, 32), threads=(1, 2), warmup=20, runs=5 if args.quick else args.runs)
    common.log("bench")
    report = bench_models([models[n] for n in order], cfg, data=args.data)
    for row, name in zip(report.models, order):
        row.name = name
    rows = _rows(report)
    target = _target(rows)
    payload = {"provenance": common.provenance(args, {"recipe": asdict(r), "bench": asdict(cfg)}),
               "target": target, "rows": rows, "bench": asdict(report), "exports": exports}
    stem = common.write_results(args, "deploy", payload, _markdown(rows, target, report))
    from rtdeploy.plots import plot_bench

    plot_bench(report, f"{stem}.png", batch_size=1, threads=1)


def _rows(report) -> list[dict]:
    out = []
    for m in report.models:
        for res in m.results:
            out.append({"model": m.name, "precision": m.precision, "params": m.params, "macs": m.macs,
                        "accuracy": m.accuracy, "size_bytes": m.size_bytes, "batch_size": res.batch_size,
                        "threads": res.threads, "p50_ms": res.latency_ms.p50, "p90_ms": res.latency_ms.p90,
                        "throughput_ips": res.throughput_ips, "speedup": res.speedup, "mac_ratio": m.mac_ratio,
                        "speedup_per_mac_ratio": (res.speedup / m.mac_ratio) if res.speedup and m.mac_ratio else None})
    return out


def _target(rows: list[dict]) -> dict:
    """Issue 4: the rt8-pruned FP32 model at least the MAC ratio faster at batch 1, 1 thread, and
    at least 0.8x the MAC ratio at batch 32 (1 thread)."""
    def row(batch):
        return next(r for r in rows if r["model"] == "cap70 rt8" and r["batch_size"] == batch and r["threads"] == 1)
    b1, b32 = row(1), row(32)
    return {"mac_ratio": b1["mac_ratio"], "speedup_b1_t1": b1["speedup"], "speedup_b32_t1": b32["speedup"],
            "b1_met": b1["speedup"] >= b1["mac_ratio"], "b32_met": b32["speedup"] >= 0.8 * b32["mac_ratio"]}


def _markdown(rows: list[dict], target: dict, report) -> str:
    env = report.environment
    lines = ["# Deployment: original vs pruned vs INT8 (ONNX Runtime, CPU)", "",
             f"CPU: {env.get('cpu', env.get('machine', {}).get('cpu', '?'))}. Every measurement in its own process; "
             f"latency p50 over {report.settings['runs']} runs after warm-up.", "",
             "| model | params | MACs | accuracy | batch | threads | p50 ms | p90 ms | images/s | speed-up | MAC ratio | speed-up / MAC ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f} %"
        ratio = "-" if r["speedup_per_mac_ratio"] is None else f"{r['speedup_per_mac_ratio']:.2f}"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['macs'] / 1e6:.1f} M | {acc} | {r['batch_size']} | "
                     f"{r['threads']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['throughput_ips']:.0f} | "
                     f"{r['speedup']:.2f}x | {r['mac_ratio']:.2f} | {ratio} |")
    lines += ["", f"Issue 4 target (rt8-pruned FP32, 1 thread): MAC ratio {target['mac_ratio']:.2f}; speed-up at batch 1 "
              f"{target['speedup_b1_t1']:.2f}x ({'met' if target['b1_met'] else 'NOT met'}: needs >= MAC ratio), at batch 32 "
              f"{target['speedup_b32_t1']:.2f}x ({'met' if target['b32_met'] else 'NOT met'}: needs >= 0.8 x MAC ratio)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
