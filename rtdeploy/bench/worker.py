"""One latency measurement, meant to run in its own process: `python -m rtdeploy.bench.worker`
reads a JSON spec on stdin and prints one JSON line with the raw latencies.

Why a process per measurement: ONNX Runtime thread pools spin while waiting for work, and
several sessions alive in one process disturb each other's timings 3-4x on these machines
(PAPER.md, deployment facts). A fresh process also makes session-creation and first-inference
times real cold numbers. Only numpy and onnxruntime are imported for ONNX rows, so the worker
starts fast; torch is imported only for the PyTorch eager reference row.

Spec keys: kind ("onnx" | "torch"), path, input_name, shape [3,H,W], batch_size, threads,
warmup, runs, seconds (or null), providers (ORT names, first = the one measured),
graph_opt (disable|basic|extended|all), spinning (bool), cpus (list or null: pin this process),
deadline_s (or null: give up between runs after this long; the parent also kills the process),
fp16 (bool, GPU providers: TensorRT's FP16 mode, or the graph converted to FP16 for CUDA).

GPU providers are measured twice per round through I/O binding (gpu.py): device-only (input and
output stay on the GPU) and end to end (host input copied in, output copied back).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

INPUT_SEED = 0  # the random inputs are the same in every run; bench reports record it


class MeasureTimeout(Exception):
    """The measurement ran past its deadline (checked between runs)."""


def _stopwatch(fn, warmup: int, runs: int, seconds: float | None, *, clock=time.perf_counter,
               give_up_at: float | None = None) -> list[float]:
    """Latencies in ms of `fn()`: after `warmup` calls, `runs` calls or as many as fit in `seconds`.

    `clock` is injectable (tests use a fake one); past `give_up_at` (a clock value) it raises
    MeasureTimeout, so an in-process measurement cannot run forever either."""
    def check():
        if give_up_at is not None and clock() > give_up_at:
            raise MeasureTimeout
    for _ in range(warmup):
        fn()
        check()
    out: list[float] = []
    deadline = clock() + seconds if seconds else None
    while (len(out) < runs) if deadline is None else (clock() < deadline or not out):
        t = clock()
        fn()
        out.append((clock() - t) * 1e3)
        check()
    return out


def pin(cpus) -> None:
    """Pin this process (and the threads it starts later) to `cpus`, when given (Linux)."""
    if cpus:
        os.sched_setaffinity(0, set(cpus))


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


def _give_up_at(spec: dict, start: float) -> float | None:
    return start + spec["deadline_s"] if spec.get("deadline_s") else None


def input_batch(spec: dict) -> np.ndarray:
    return np.random.default_rng(INPUT_SEED).standard_normal((spec["batch_size"], *spec["shape"]), dtype=np.float32)


def measure_onnx(spec: dict) -> dict:
    import onnxruntime as ort

    start = time.perf_counter()
    x = input_batch(spec)
    opts = session_options(spec["threads"], spec["graph_opt"], spec["spinning"])
    if spec["providers"][0] != "CPUExecutionProvider":
        from .gpu import measure_gpu

        return measure_gpu(spec, x, opts, _give_up_at(spec, start))
    sess, session_ms = _timed(lambda: ort.InferenceSession(spec["path"], sess_options=opts, providers=spec["providers"]))
    feed = {spec["input_name"]: x}
    _, first_ms = _timed(lambda: sess.run(None, feed))
    lat = _stopwatch(lambda: sess.run(None, feed), spec["warmup"], spec["runs"], spec["seconds"],
                     give_up_at=_give_up_at(spec, start))
    return {"session_ms": session_ms, "first_ms": first_ms, "latencies_ms": lat, "provider": sess.get_providers()[0]}


def measure_torch(spec: dict) -> dict:
    import torch

    from ..checkpoint import load_checkpoint

    start = time.perf_counter()
    previous = torch.get_num_threads()
    torch.set_num_threads(spec["threads"])
    try:
        # no check run on load: it would be the first inference, which is timed below
        (model, _), session_ms = _timed(lambda: load_checkpoint(spec["path"], check_forward=False))
        x = torch.randn(spec["batch_size"], *spec["shape"], generator=torch.Generator().manual_seed(INPUT_SEED))
        with torch.inference_mode():
            _, first_ms = _timed(lambda: model(x))
            lat = _stopwatch(lambda: model(x), spec["warmup"], spec["runs"], spec["seconds"],
                             give_up_at=_give_up_at(spec, start))
    finally:
        torch.set_num_threads(previous)  # matters only in-process (isolate=False)
    return {"session_ms": session_ms, "first_ms": first_ms, "latencies_ms": lat, "provider": "torch-eager"}


def measure(spec: dict) -> dict:
    return measure_torch(spec) if spec["kind"] == "torch" else measure_onnx(spec)


def main() -> int:
    try:
        spec = json.loads(sys.stdin.read())
        pin(spec.get("cpus"))
        result = measure(spec)
    except MeasureTimeout:
        print(json.dumps({"timeout": True}))
        return 1
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises a typed error
        print(json.dumps({"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
