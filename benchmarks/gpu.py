"""GPU benchmark (issue 13): ONNX Runtime's CUDA and TensorRT execution providers, FP32 and FP16,
device-only and end-to-end latency (I/O binding), SE-ResNet18 at 64 px vs its 0.7 prune.

Self-contained: no dataset, no network. The models are built here (random init: latency depends
on the widths, not the weights, so the accuracy is not measured), pruned at ratio 0.7 with
--round-to auto for the GPU target (tensor-core multiples of 8), exported with rtdeploy's export
(dynamo exporter, parity-checked), then measured with `rtdeploy bench` in interleaved rounds.

Needs onnxruntime-gpu (the CPU-only onnxruntime has no CUDA provider). Without network, carry
the wheel in and install it in place of the CPU one first:

    pip uninstall -y onnxruntime && pip install --no-deps onnxruntime_gpu-<version>-cp312-*.whl

Run from the repository root:

    PYTHONPATH=$PWD python -m benchmarks.gpu --out /tmp/gpu-results [--rounds 10] [--seconds 0.5]

Writes <out>/gpu.json and <out>/gpu.md (on a missing onnxruntime-gpu or GPU: a gpu.json whose
"status" says why, and exit code 3). Copy them to benchmarks/results/ to commit them.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import asdict
from pathlib import Path

CLASSES = [f"class_{i:02d}" for i in range(21)]
IMG_SIZE = 64


def _write(out: Path, payload: dict, markdown: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if markdown:
        (out / "gpu.md").write_text(markdown)
    print(f"wrote {out / 'gpu.json'}" + (f" and {out / 'gpu.md'}" if markdown else ""), file=sys.stderr)


def _preflight() -> tuple[list[str], str | None]:
    """(GPU providers to measure, None) or ([], why not)."""
    missing = []
    for module in ("torch", "torch_pruning", "onnx", "onnxsim", "onnxscript", "onnxruntime", "typer", "rich"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        return [], f"missing Python packages: {', '.join(missing)} (install rtdeploy's dependencies first)"
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return [], (f"onnxruntime-gpu is absent: onnxruntime {ort.__version__} offers {', '.join(available)} only; "
                    "uninstall onnxruntime and pip install --no-deps the onnxruntime_gpu wheel for this Python")
    return [p for p in ("cuda", "tensorrt") if {"cuda": "CUDAExecutionProvider",
                                                 "tensorrt": "TensorrtExecutionProvider"}[p] in available], None


def _checkpoints(work: Path) -> tuple[Path, Path, dict]:
    """An unpruned SE-ResNet18 and its 0.7 prune (SE folded away is not needed for timing: the
    pruned model keeps SE, as compress does with a non-CAP criterion)."""
    import torch

    from rtdeploy.checkpoint import ModelMeta, save_checkpoint
    from rtdeploy.models import create_model
    from rtdeploy.prune import PruneConfig, prune_model

    torch.manual_seed(0)
    meta = ModelMeta("resnet18_se", CLASSES, IMG_SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                     history=[{"stage": "train", "seed": 0, "data": "random init (gpu benchmark)"}])
    base, pruned = work / "resnet18_se.pt", work / "resnet18_se_l1_r0.7_auto.pt"
    model = create_model("resnet18_se", len(CLASSES)).eval()
    save_checkpoint(base, model, meta)
    cfg = PruneConfig(ratio=0.7, round_to="auto", round_to_target="cuda")
    report = prune_model(model, "l1", torch.zeros(1, 3, IMG_SIZE, IMG_SIZE), cfg)
    save_checkpoint(pruned, model, meta)
    return base, pruned, {"ratio": report.ratio, "round_to": report.round_to, "reason": report.round_to_reason,
                          "macs_fraction": report.macs_fraction}


def _markdown(reports: dict, prune: dict, gpu: str) -> str:
    lines = ["# GPU: SE-ResNet18 (64 px) vs its 0.7 prune under ONNX Runtime CUDA / TensorRT", "",
             f"Pruned at ratio 0.7, round-to {prune['round_to']} ({prune['reason']}); random weights (latency only).",
             "Interleaved rounds; speed-up = median of paired per-round ratios [95 % interval]. Device-only: input and "
             "output bound on the GPU (I/O binding); end to end: host numpy in, host logits out.", "",
             "| provider | precision | model | batch | device p50 ms | end-to-end p50 ms | speed-up (e2e) [95 % CI] | MAC ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r in reports.items():
        for m in r.models:
            for x in m.results:
                dev = f"{x.device_latency_ms.p50:.3f}" if x.device_latency_ms else "-"
                s = x.speedup
                ci = f" [{s.ci95[0]:.2f}-{s.ci95[1]:.2f}]" if s and s.ci95 else ""
                lines.append(f"| {key.split('/')[0]} | {key.split('/')[1]} | {m.name} | {x.batch_size} | {dev} | "
                             f"{x.latency_ms.p50:.3f} | {s.median:.2f}x{ci} | {m.mac_ratio:.2f} |")
    host = next(iter(reports.values())).environment["machine"]
    return "\n".join(lines + ["", f"GPU: {gpu}. Host CPU: {host['cpu']}."]) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seconds", type=float, default=0.5, help="timed seconds per model, setting and round")
    p.add_argument("--batch-sizes", default="1,32")
    args = p.parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    providers, why = _preflight()
    if why:
        _write(args.out, {"status": f"not run: {why}", "date": started, "python": sys.version})
        print(f"gpu benchmark: not run: {why}", file=sys.stderr)
        return 3
    from rtdeploy.bench import BenchConfig, bench_models
    from rtdeploy.env import machine, versions
    from rtdeploy.export import ExportConfig, export_checkpoint

    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    base, pruned, prune = _checkpoints(work)
    onnx = []
    exports = {}
    for ckpt in (base, pruned):
        exports[ckpt.stem] = asdict(export_checkpoint(ckpt, ckpt.with_suffix(".onnx"), ExportConfig()))
        onnx.append(ckpt.with_suffix(".onnx"))
    batches = tuple(int(b) for b in args.batch_sizes.split(","))
    reports, errors = {}, {}
    for provider in providers:
        for fp16 in (False, True):
            key = f"{provider}/{'fp16' if fp16 else 'fp32'}"
            print(f"gpu benchmark: {key}", file=sys.stderr)
            cfg = BenchConfig(provider=provider, batch_sizes=batches, threads=(1,), warmup=20, runs=1,
                              seconds=args.seconds, rounds=args.rounds, fp16=fp16, timeout_s=600)
            try:
                reports[key] = bench_models(onnx, cfg)
            except Exception as e:  # noqa: BLE001 - one provider failing must not lose the others
                errors[key] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
                print(f"gpu benchmark: {key} failed: {errors[key]}", file=sys.stderr)
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "unknown (torch sees no CUDA device)"
    payload = {"status": "ok" if reports else "failed", "date": started, "command": " ".join(sys.argv),
               "versions": versions(), "machine": machine(), "gpu": gpu, "prune": prune, "errors": errors,
               "reports": {k: asdict(r) for k, r in reports.items()}, "exports": exports}
    _write(args.out, payload, _markdown(reports, prune, gpu) if reports else None)
    return 0 if reports else 1


if __name__ == "__main__":
    sys.exit(main())
