"""`rtdeploy bench` as a library call: ONNX Runtime latency, throughput, size, params, MACs and
accuracy of several models side by side; returns a BenchReport (the CLI renders it).

Honest measurement (after onnxruntime_perf_test and OpenVINO benchmark_app): warm-up, then
timed runs; every (model, threads, batch size) is measured alone, in its own process
(rtdeploy.bench.worker), one after another, so models never disturb each other. Session
creation and first inference are reported apart from steady-state latency.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import worker as bench_worker
from .models import BenchModel, accuracies, resolve_models
from ..data import load_splits
from ..env import machine, versions
from ..errors import ConfigError, PipelineError

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}
GRAPH_OPT = ("disable", "basic", "extended", "all")
Progress = Callable[[int, int, str], None]


@dataclass
class BenchConfig:
    provider: str = "cpu"
    batch_sizes: tuple[int, ...] = (1,)
    threads: tuple[int, ...] = (1,)
    warmup: int = 10
    runs: int = 100
    seconds: float | None = None   # time-boxed runs instead of a fixed count
    graph_opt: str = "all"
    torch: bool = False            # add a PyTorch eager row for each checkpoint
    isolate: bool = True           # a process per measurement (else in-process, spinning off)

    def __post_init__(self):
        self.batch_sizes, self.threads = tuple(self.batch_sizes), tuple(self.threads)
        for flag, values in (("--batch-sizes", self.batch_sizes), ("--threads", self.threads)):
            if not values or min(values) < 1:
                raise ConfigError(f"{flag} must be integers >= 1, got {','.join(map(str, values)) or 'nothing'}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup}")
        if self.runs < 1:
            raise ConfigError(f"--runs must be >= 1, got {self.runs}")
        if self.seconds is not None and not self.seconds > 0:
            raise ConfigError(f"--seconds must be > 0, got {self.seconds}")
        if self.provider not in PROVIDERS:
            raise ConfigError(f"--provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        if self.graph_opt not in GRAPH_OPT:
            raise ConfigError(f"--graph-opt must be one of {', '.join(GRAPH_OPT)}, got {self.graph_opt!r}")


@dataclass
class Latency:
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float


@dataclass
class BenchResult:
    provider: str
    threads: int
    batch_size: int
    latency_ms: Latency
    throughput_ips: float
    session_ms: float
    first_inference_ms: float
    runs: int
    speedup: float | None = None     # baseline p50 / this p50, same threads and batch size


@dataclass
class ModelBench:
    name: str
    path: str
    source: str                      # "onnx" or "checkpoint" (exported on the fly)
    runtime: str                     # "onnxruntime" or "torch"
    arch: str | None
    precision: str | None
    img_size: int
    params: int                      # counted on the ONNX graph (initializers)
    macs: int                        # counted on the ONNX graph (Conv/Gemm/MatMul), one image
    torch_params: int | None         # torch-pruning count, when a checkpoint is known
    torch_macs: int | None
    size_bytes: int
    accuracy: float | None
    accuracy_images: int = 0
    mac_ratio: float | None = None   # baseline MACs / these MACs
    results: list[BenchResult] = field(default_factory=list)


@dataclass
class BenchReport:
    environment: dict
    settings: dict
    models: list[ModelBench]
    notes: list[str] = field(default_factory=list)


def check_provider(provider: str) -> list[str]:
    """The ORT provider list for --provider, or ConfigError listing what this build offers."""
    import onnxruntime as ort

    wanted = PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise ConfigError(f"--provider {provider}: {wanted[0]} is not available in this onnxruntime "
                          f"(available: {', '.join(available)}); install onnxruntime-gpu "
                          "(pip install 'rtdeploy[gpu]') on a machine with CUDA, or use --provider cpu")
    return [p for p in wanted if p in available]


def _check_batches(models: list[BenchModel], cfg: BenchConfig) -> None:
    for m in models:
        bad = [b for b in cfg.batch_sizes if m.static_batch is not None and b != m.static_batch]
        if bad:
            raise ConfigError(f"--batch-sizes {','.join(map(str, bad))}: model {m.path} has a static batch of "
                              f"{m.static_batch}; bench it with --batch-sizes {m.static_batch} or re-export "
                              "it with --dynamic-batch")


def _run_worker(spec: dict, isolate: bool) -> dict:
    if not isolate:
        return bench_worker.measure(spec)
    proc = subprocess.run([sys.executable, "-m", "rtdeploy.bench.worker"], input=json.dumps(spec),
                          capture_output=True, text=True)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"the benchmark worker crashed (exit {proc.returncode}): {tail}") from None
    if proc.returncode != 0 or "error" in result:
        raise PipelineError(f"measuring {spec['path']} failed: {result.get('error', 'unknown error')}")
    return result


def _result(raw: dict, threads: int, batch: int) -> BenchResult:
    lat = np.asarray(raw["latencies_ms"], dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(lat, [50, 90, 99]))
    mean = float(lat.mean())
    return BenchResult(raw["provider"], threads, batch, Latency(p50, p90, p99, mean, float(lat.min()), float(lat.max())),
                       batch * 1e3 / mean, raw["session_ms"], raw["first_ms"], len(lat))


def _rows(models: list[BenchModel], cfg: BenchConfig, acc: dict) -> list[tuple[ModelBench, BenchModel, str]]:
    """(report row, model, runtime) for each measured row: every model, plus a torch twin for
    checkpoints with cfg.torch (same network, so it shares the ONNX counts)."""
    rows = []
    for m in models:
        base = dict(path=str(m.path), source=m.source, arch=m.meta.arch if m.meta else None,
                    img_size=m.shape[1], params=m.params, macs=m.macs, torch_params=m.torch_params,
                    torch_macs=m.torch_macs, size_bytes=m.size_bytes)
        a, n = acc.get((m.name, "onnx"), (None, 0))
        rows.append((ModelBench(name=m.name, runtime="onnxruntime", precision=m.meta.precision if m.meta else None,
                                accuracy=a, accuracy_images=n, **base), m, "onnx"))
        if cfg.torch and m.source == "checkpoint":
            a, n = acc.get((m.name, "torch"), (None, 0))
            rows.append((ModelBench(name=f"{m.name} (torch)", runtime="torch", precision="fp32",
                                    accuracy=a, accuracy_images=n, **base), m, "torch"))
    return rows


def _spec(m: BenchModel, kind: str, cfg: BenchConfig, providers: list[str], threads: int, batch: int) -> dict:
    return {"kind": kind, "path": str(m.onnx_path if kind == "onnx" else m.path), "input_name": m.input_name,
            "shape": list(m.shape), "batch_size": batch, "threads": threads, "warmup": cfg.warmup,
            "runs": cfg.runs, "seconds": cfg.seconds, "providers": providers, "graph_opt": cfg.graph_opt,
            "spinning": cfg.isolate}


def _relative(rows: list[ModelBench]) -> None:
    """Speed-up (baseline p50 / p50, same threads and batch) and MAC ratio against the first row."""
    base = rows[0]
    base_p50 = {(r.threads, r.batch_size): r.latency_ms.p50 for r in base.results}
    for row in rows:
        row.mac_ratio = base.macs / row.macs if row.macs else None
        for r in row.results:
            ref = base_p50.get((r.threads, r.batch_size))
            r.speedup = ref / r.latency_ms.p50 if ref and r.latency_ms.p50 > 0 else None


def _environment(cfg: BenchConfig, providers: list[str]) -> dict:
    import onnxruntime as ort

    return {"machine": machine(), "versions": versions(), "provider": cfg.provider, "ort_providers": providers,
            "available_providers": ort.get_available_providers(), "threads": list(cfg.threads),
            "inter_op_threads": 1, "graph_optimization_level": cfg.graph_opt, "execution_mode": "sequential",
            "isolation": "one process per measurement" if cfg.isolate else "in-process, thread spinning off",
            "thread_spinning": cfg.isolate}


def _settings(cfg: BenchConfig, data: str | None) -> dict:
    return {"batch_sizes": list(cfg.batch_sizes), "threads": list(cfg.threads), "warmup": cfg.warmup,
            "runs": None if cfg.seconds else cfg.runs, "seconds": cfg.seconds, "data": data, "torch": cfg.torch,
            "input": "random normal (normalised space), fixed seed", "input_seed": bench_worker.INPUT_SEED}


def bench_models(paths: list[str | Path], cfg: BenchConfig | None = None, *, data: str | None = None,
                 data_root: str | None = None, load=load_splits, on_progress: Progress | None = None,
                 on_stage: Callable[[str], None] | None = None) -> BenchReport:
    """Measure `paths` (.onnx files or checkpoints) under `cfg`; the first is the baseline.

    on_stage(text) reports preparation steps; on_progress(done, total, label) each measurement.
    """
    cfg = cfg or BenchConfig()
    if not paths:
        raise ConfigError("give at least one model (.onnx file or rtdeploy checkpoint)")
    providers = check_provider(cfg.provider)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rtdeploy-bench-") as tmp:
        models = resolve_models([Path(p) for p in paths], Path(tmp), on_stage)
        _check_batches(models, cfg)
        if data is not None and on_stage:
            on_stage("measuring accuracy")
        acc = accuracies(models, data, data_root, load, cfg.torch, notes) if data is not None else {}
        rows = _rows(models, cfg, acc)
        plan = [(row, m, kind, t, b) for row, m, kind in rows for t in cfg.threads for b in cfg.batch_sizes]
        for done, (row, m, kind, threads, batch) in enumerate(plan):
            if on_progress:
                on_progress(done, len(plan), f"{row.name} batch {batch}, {threads} thread(s)")
            raw = _run_worker(_spec(m, kind, cfg, providers, threads, batch), cfg.isolate)
            row.results.append(_result(raw, threads, batch))
        if on_progress:
            on_progress(len(plan), len(plan), "done")
    report_rows = [row for row, _, _ in rows]
    _relative(report_rows)
    return BenchReport(_environment(cfg, providers), _settings(cfg, data), report_rows, notes)
