"""`rtdeploy bench`: ONNX Runtime measurement of several models side by side.

config.py   BenchConfig: every setting checked and bounded
runner.py   interleaved rounds over models and settings, the BenchReport
stats.py    paired per-round speed-ups, their 95 % interval, the spread
models.py   model files resolved to validated ONNX graphs, params/MACs, accuracy
worker.py   one latency measurement, run in its own process (`python -m rtdeploy.bench.worker`)
gpu.py      CUDA / TensorRT measurement through I/O binding (device-only and end to end)
"""
import importlib

# Lazy (PEP 562): the measuring worker runs as `python -m rtdeploy.bench.worker`, which imports this
# package first; importing the runner here would load torch into every worker process.
_API = {"PROVIDERS": "config", "BenchConfig": "config", "parse_cpus": "config",
        "BenchReport": "runner", "BenchResult": "runner", "Latency": "runner", "ModelBench": "runner",
        "Round": "runner", "Task": "runner", "bench_models": "runner", "check_provider": "runner",
        "interleaved": "runner", "run_rounds": "runner",
        "Speedup": "stats", "median_ci95": "stats", "paired_speedup": "stats"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value
