"""`rtdeploy bench`: ONNX Runtime measurement of several models side by side.

runner.py   the measurement plan (interleaved rounds) and the BenchReport
models.py   model files resolved to validated ONNX graphs, params/MACs, accuracy
worker.py   one latency measurement, run in its own process (`python -m rtdeploy.bench.worker`)
"""
from .runner import (PROVIDERS, BenchConfig, BenchReport, BenchResult, Latency, ModelBench, bench_models,
                     check_provider)

__all__ = ["PROVIDERS", "BenchConfig", "BenchReport", "BenchResult", "Latency", "ModelBench", "bench_models",
           "check_provider"]
