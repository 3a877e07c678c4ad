"""One latency measurement, meant to run in its own process: `python -m rtdeploy.bench.worker`
reads a JSON spec on stdin and prints one JSON line with the raw latencies.

Why a process per measurement: ONNX Runtime thread pools spin while waiting for work, and
several sessions alive in one process disturb each other's timings 3-4x on these machines
(PAPER.md, deployment facts). A fresh process also makes session-creation and first-inference
times real cold numbers. Only numpy and onnxruntime are imported for ONNX rows, so the worker
starts fast; torch is imported only for the PyTorch eager reference row.

Spec keys: kind ("onnx" | "torch"), path, input_name, shape [3,H,W], batch_size, threads,
warmup, runs, seconds (or null), providers (ORT names, first = the one measured),
graph_opt (disable|basic|extended|all), spinning (bool).
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

INPUT_SEED = 0  # the random inputs are the same in every run; bench reports record it


def _stopwatch(fn, warmup: int, runs: int, seconds: float | None) -> list[float]:
    """Latencies in ms of `fn()`: after `warmup` calls, `runs` calls or as many as fit in `seconds`."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    deadline = time.perf_counter() + seconds if seconds else None
    while (len(out) < runs) if deadline is None else (time.perf_counter() < deadline or not out):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _timed(fn):
    t = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - t) * 1e3


def session_options(threads: int, graph_opt: str, spinning: bool):
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = levels[graph_opt]
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return opts


def measure_onnx(spec: dict) -> dict:
    import onnxruntime as ort

    x = np.random.default_rng(INPUT_SEED).standard_normal((spec["batch_size"], *spec["shape"]), dtype=np.float32)
    opts = session_options(spec["threads"], spec["graph_opt"], spec["spinning"])
    sess, session_ms = _timed(lambda: ort.InferenceSession(spec["path"], sess_options=opts, providers=spec["providers"]))
    wanted, got = spec["providers"][0], sess.get_providers()[0]
    if got != wanted:
        raise RuntimeError(f"ONNX Runtime fell back from {wanted} to {got}; the {wanted} libraries "
                           "(CUDA/cuDNN/TensorRT) are not usable on this machine")
    feed = {spec["input_name"]: x}
    _, first_ms = _timed(lambda: sess.run(None, feed))
    lat = _stopwatch(lambda: sess.run(None, feed), spec["warmup"], spec["runs"], spec["seconds"])
    return {"session_ms": session_ms, "first_ms": first_ms, "latencies_ms": lat, "provider": got}


def measure_torch(spec: dict) -> dict:
    import torch

    from ..checkpoint import load_checkpoint

    previous = torch.get_num_threads()
    torch.set_num_threads(spec["threads"])
    try:
        (model, _), session_ms = _timed(lambda: load_checkpoint(spec["path"]))
        x = torch.randn(spec["batch_size"], *spec["shape"], generator=torch.Generator().manual_seed(INPUT_SEED))
        with torch.inference_mode():
            _, first_ms = _timed(lambda: model(x))
            lat = _stopwatch(lambda: model(x), spec["warmup"], spec["runs"], spec["seconds"])
    finally:
        torch.set_num_threads(previous)  # matters only in-process (isolate=False)
    return {"session_ms": session_ms, "first_ms": first_ms, "latencies_ms": lat, "provider": "torch-eager"}


def measure(spec: dict) -> dict:
    return measure_torch(spec) if spec["kind"] == "torch" else measure_onnx(spec)


def main() -> int:
    try:
        result = measure(json.loads(sys.stdin.read()))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises a typed error
        print(json.dumps({"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
