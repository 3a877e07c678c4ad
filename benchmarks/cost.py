"""Experiment 5: toolchain cost. Seconds spent in each compress stage (capture, fold, prune,
fine-tune per epoch) and each export stage (ONNX export, simplify, parity, INT8 calibration) for
SE-ResNet18 at 64x64 on UC Merced, on this machine.

    python -m benchmarks.cost --data ../shared/data/ucmerced
"""
from __future__ import annotations

import time
from dataclasses import asdict

from . import common


def main(argv=None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    args.seeds = args.seeds.split(",")[0]
    seed, r = common.seeds(args)[0], common.recipe(args)
    base = common.base_checkpoint(args, r, seed)
    rep = common.compress_run(args, r, base, seed, criterion="cap", loss="aml")
    epochs = rep["finetune"]["epochs"]
    compress_s = {k: v for k, v in rep["seconds"].items() if k != "finetune"}
    compress_s["finetune_per_epoch"] = sum(e["seconds"] for e in epochs) / len(epochs)
    export_s = {name: _export_stages(args, ckpt, r) for name, ckpt in
                (("original", base), ("pruned", rep["checkpoint"]))}
    payload = {"provenance": common.provenance(args, {"recipe": asdict(r), "criterion": "cap", "loss": "aml",
                                                      "ratio": 0.7}),
               "compress_seconds": compress_s, "finetune_epochs": len(epochs), "export_seconds": export_s}
    common.write_results(args, "cost", payload, _markdown(compress_s, export_s, len(epochs)))


def _export_stages(args, ckpt, r) -> dict:
    """Time each export step separately (the same calls `rtdeploy export` makes)."""
    from rtdeploy.checkpoint import load_checkpoint
    from rtdeploy.evaluation import splits_for
    from rtdeploy.export import DEFAULT_OPSET, check_graph, check_parity, quantize_int8, simplify, to_onnx

    out = {}
    t = time.perf_counter()
    model, meta = load_checkpoint(ckpt)
    test = splits_for(meta, args.data, max_per_class=r.max_per_class).test.normalised()[:256]
    out["load"] = time.perf_counter() - t
    t = time.perf_counter()
    graph = to_onnx(model, meta.img_size, opset=DEFAULT_OPSET, dynamic_batch=True, exporter="torchscript")  # as its v1 results
    out["onnx_export"] = time.perf_counter() - t
    t = time.perf_counter()
    graph, ok = simplify(graph, "onnxsim")
    check_graph(graph)
    out["simplify_and_check"] = time.perf_counter() - t
    t = time.perf_counter()
    parity = check_parity(graph, model, test, inputs="test split")
    out["parity_256_images"] = time.perf_counter() - t
    t = time.perf_counter()
    quantize_int8(graph, test.numpy())
    out["int8_calibrate_and_quantize_256"] = time.perf_counter() - t
    out["parity_passed"] = parity.passed
    return out


def _markdown(compress_s, export_s, epochs) -> str:
    lines = ["# Toolchain cost: SE-ResNet18 at 64x64, UC Merced (2 CPU cores)", "",
             "| compress stage | seconds |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v:.2f} |" for k, v in compress_s.items()]
    lines += ["", f"(fine-tuning: {epochs} epochs in total)", "",
              "| export stage | original (s) | pruned (s) |", "|---|---|---|"]
    keys = [k for k in export_s["original"] if k != "parity_passed"]
    lines += [f"| {k.replace('_', ' ')} | {export_s['original'][k]:.2f} | {export_s['pruned'][k]:.2f} |" for k in keys]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
