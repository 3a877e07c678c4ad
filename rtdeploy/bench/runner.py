"""`rtdeploy bench` as a library call: ONNX Runtime latency, throughput, size, params, MACs and
accuracy of several models side by side; returns a BenchReport (the CLI renders it).

Measurement (after onnxruntime_perf_test and OpenVINO benchmark_app, plus interleaving): the
models and settings are measured in rounds, A B A B ..., each measurement alone in a fresh
process (worker.py) with warm-up, then timed runs. Per model and setting, the latency is the
median over rounds of the per-round median; the speed-up is the median of the per-round ratios
to the baseline, with a 95 % interval (stats.py). Every measurement has a timeout.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import load_splits
from ..env import machine, versions
from ..errors import ConfigError, PipelineError
from . import worker as bench_worker
from .config import MAX_INPUT_BYTES, PROVIDERS, BenchConfig
from .models import BenchModel, accuracies, resolve_models
from .stats import INTERVAL_METHOD, MIN_ROUNDS_FOR_CI, UNSTABLE_WIDTH, Speedup, cv, paired_speedup

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass
class Latency:
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float


@dataclass
class Round:
    """One round of one model at one setting (a fresh process)."""

    round: int
    p50_ms: float
    mean_ms: float
    runs: int
    session_ms: float
    first_inference_ms: float
    device_p50_ms: float | None = None


@dataclass
class BenchResult:
    """One model at one (threads, batch size). latency_ms.p50 is the median of the round medians;
    the other percentiles pool every timed run of every round."""

    provider: str
    threads: int
    batch_size: int
    latency_ms: Latency
    throughput_ips: float
    session_ms: float                # median over rounds (each round is a cold start)
    first_inference_ms: float
    runs: int                        # timed runs, all rounds
    speedup: Speedup | None = None   # paired per-round ratios to the baseline, same threads and batch
    cv: float = 0.0                  # spread of the round medians (std / mean)
    rounds: list[Round] = field(default_factory=list)
    device_latency_ms: Latency | None = None  # GPU: input and output kept on the device
    fp16: bool = False


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


@dataclass
class Task:
    """One (model row, threads, batch size): measured once per round."""

    row: int
    threads: int
    batch_size: int
    spec: dict
    label: str                       # "pruned, batch 32, 2 threads": for progress and errors


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
        image_bytes = 4 * int(np.prod(m.shape))
        too_big = [b for b in cfg.batch_sizes if b * image_bytes > MAX_INPUT_BYTES]
        if too_big:
            raise ConfigError(f"--batch-sizes {too_big[0]}: a batch of {m.shape[1]}x{m.shape[2]} images for {m.path} "
                              f"would take {too_big[0] * image_bytes / 2**30:.1f} GiB (limit 1 GiB); use a smaller batch")


def _run_worker(spec: dict, cfg: BenchConfig, label: str) -> dict:
    """One measurement: in a fresh process (killed after cfg.timeout_s), or in this one."""
    too_slow = PipelineError(f"measuring {label} did not finish within --timeout {cfg.timeout_s:g} s; "
                             "raise --timeout or lower --runs, --seconds or --warmup")
    if not cfg.isolate:
        try:
            with _pinned(cfg.cpus):
                return bench_worker.measure(spec)
        except bench_worker.MeasureTimeout:
            raise too_slow from None
    try:
        proc = subprocess.run([sys.executable, "-m", "rtdeploy.bench.worker"], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=cfg.timeout_s)
    except subprocess.TimeoutExpired:  # subprocess.run has killed the worker
        raise too_slow from None
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"measuring {label}: the benchmark worker crashed (exit {proc.returncode}): {tail}") from None
    if result.get("timeout"):
        raise too_slow
    if proc.returncode != 0 or "error" in result:
        raise PipelineError(f"measuring {label} failed: {result.get('error', 'unknown error')}")
    return result


@contextlib.contextmanager
def _pinned(cpus):
    """In-process measurement with --cpus: pin this process for the measurement, then restore."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def interleaved(tasks: list[Task], rounds: int):
    """(round, task index) in measuring order: every round visits every setting and model, A B A B ..."""
    for r in range(rounds):
        for i in range(len(tasks)):
            yield r, i


def run_rounds(tasks: list[Task], rounds: int, measure: Callable[[Task, int], dict],
               on_progress: Progress | None = None) -> list[list[dict]]:
    """Raw worker results, per task, in round order. `measure(task, round)` does one measurement."""
    raws: list[list[dict]] = [[] for _ in tasks]
    total = len(tasks) * rounds
    for done, (r, i) in enumerate(interleaved(tasks, rounds)):
        if on_progress:
            on_progress(done, total, f"{tasks[i].label}, round {r + 1}/{rounds}")
        raws[i].append(measure(tasks[i], r))
    if on_progress:
        on_progress(total, total, "done")
    return raws


def _latency(lat: np.ndarray, p50: float) -> Latency:
    p90, p99 = (float(v) for v in np.percentile(lat, [90, 99]))
    return Latency(p50, max(p50, p90), max(p50, p99), float(lat.mean()), float(lat.min()), float(lat.max()))


def summarise(raws: list[dict], threads: int, batch: int) -> BenchResult:
    """One BenchResult from the rounds of one task."""
    rounds = [Round(i + 1, float(np.median(raw["latencies_ms"])), float(np.mean(raw["latencies_ms"])),
                    len(raw["latencies_ms"]), raw["session_ms"], raw["first_ms"],
                    float(np.median(raw["device_latencies_ms"])) if raw.get("device_latencies_ms") else None)
              for i, raw in enumerate(raws)]
    pooled = np.concatenate([np.asarray(raw["latencies_ms"], dtype=np.float64) for raw in raws])
    medians = [r.p50_ms for r in rounds]
    lat = _latency(pooled, statistics.median(medians))
    device = None
    if all(r.device_p50_ms is not None for r in rounds):
        dev = np.concatenate([np.asarray(raw["device_latencies_ms"], dtype=np.float64) for raw in raws])
        device = _latency(dev, statistics.median(r.device_p50_ms for r in rounds))
    return BenchResult(raws[0]["provider"], threads, batch, lat, batch * 1e3 / lat.mean,
                       statistics.median(r.session_ms for r in rounds),
                       statistics.median(r.first_inference_ms for r in rounds), len(pooled),
                       cv=cv(medians), rounds=rounds, device_latency_ms=device, fp16=bool(raws[0].get("fp16")))


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
            "spinning": cfg.isolate, "cpus": list(cfg.cpus) if cfg.cpus else None, "deadline_s": cfg.timeout_s,
            "fp16": cfg.fp16}


def _tasks(rows, cfg: BenchConfig, providers: list[str]) -> list[Task]:
    """Settings outermost, models innermost: within a round, the models at one setting run back to back."""
    return [Task(i, t, b, _spec(m, kind, cfg, providers, t, b), f"{row.name}, batch {b}, {t} thread(s)")
            for t in cfg.threads for b in cfg.batch_sizes for i, (row, m, kind) in enumerate(rows)]


def relative(rows: list[ModelBench]) -> None:
    """Speed-up (paired per-round ratios to the first row, same threads and batch) and MAC ratio."""
    base = rows[0]
    base_rounds = {(r.threads, r.batch_size): [x.p50_ms for x in r.rounds] for r in base.results}
    for row in rows:
        row.mac_ratio = base.macs / row.macs if row.macs else None
        for r in row.results:
            ref = base_rounds.get((r.threads, r.batch_size))
            r.speedup = paired_speedup(ref, [x.p50_ms for x in r.rounds]) if ref else None


def _environment(cfg: BenchConfig, providers: list[str]) -> dict:
    import onnxruntime as ort

    return {"machine": machine(), "versions": versions(), "provider": cfg.provider, "ort_providers": providers,
            "available_providers": ort.get_available_providers(), "threads": list(cfg.threads),
            "inter_op_threads": 1, "graph_optimization_level": cfg.graph_opt, "execution_mode": "sequential",
            "isolation": "one process per measurement" if cfg.isolate else "in-process, thread spinning off",
            "thread_spinning": cfg.isolate, "cpus": list(cfg.cpus) if cfg.cpus else None}


def _settings(cfg: BenchConfig, data: str | None) -> dict:
    return {"batch_sizes": list(cfg.batch_sizes), "threads": list(cfg.threads), "warmup": cfg.warmup,
            "runs": None if cfg.seconds else cfg.runs, "seconds": cfg.seconds, "rounds": cfg.rounds,
            "timeout_s": cfg.timeout_s, "fp16": cfg.fp16, "data": data, "torch": cfg.torch,
            "order": "interleaved rounds: every round measures every setting and model, A B A B ...",
            "latency": "p50 = median over rounds of the per-round median; p90/p99/mean/min/max pool all runs",
            "speedup_method": INTERVAL_METHOD, "unstable_if_ci95_wider_than": UNSTABLE_WIDTH,
            "min_rounds_for_ci95": MIN_ROUNDS_FOR_CI,
            "input": "random normal (normalised space), fixed seed", "input_seed": bench_worker.INPUT_SEED}


def _notes(rows: list[ModelBench], cfg: BenchConfig) -> list[str]:
    notes = []
    if cfg.rounds < MIN_ROUNDS_FOR_CI and len(rows) > 1:
        notes.append(f"{cfg.rounds} round(s): speed-ups have no 95 % interval below {MIN_ROUNDS_FOR_CI} rounds "
                     f"(use --rounds {MIN_ROUNDS_FOR_CI} or more)")
    unstable = [f"{m.name} (batch {r.batch_size}, {r.threads} thread(s))" for m in rows[1:] for r in m.results
                if r.speedup is not None and r.speedup.unstable]
    if unstable:
        notes.append(f"unstable speed-up (95 % interval wider than {100 * UNSTABLE_WIDTH:.0f} % of the median): "
                     f"{'; '.join(unstable)}; the machine was busy: rerun with more --rounds, or pin with --cpus")
    return notes


def bench_models(paths: list[str | Path], cfg: BenchConfig | None = None, *, data: str | None = None,
                 data_root: str | None = None, load=load_splits, on_progress: Progress | None = None,
                 on_stage: Callable[[str], None] | None = None,
                 measure: Callable[[Task, int], dict] | None = None) -> BenchReport:
    """Measure `paths` (.onnx files or checkpoints) under `cfg`; the first is the baseline.

    on_stage(text) reports preparation steps; on_progress(done, total, label) each measurement.
    `measure(task, round)` replaces the real measurement (tests drive the rounds with a fake clock).
    """
    cfg = cfg or BenchConfig()
    if not paths:
        raise ConfigError("give at least one model (.onnx file or rtdeploy checkpoint)")
    providers = check_provider(cfg.provider)
    notes: list[str] = []
    measure = measure or (lambda task, r: _run_worker(task.spec, cfg, f"{task.label}, round {r + 1}/{cfg.rounds}"))
    with tempfile.TemporaryDirectory(prefix="rtdeploy-bench-") as tmp:
        models = resolve_models([Path(p) for p in paths], Path(tmp), on_stage)
        _check_batches(models, cfg)
        if data is not None and on_stage:
            on_stage("measuring accuracy")
        acc = accuracies(models, data, data_root, load, cfg.torch, notes) if data is not None else {}
        rows = _rows(models, cfg, acc)
        tasks = _tasks(rows, cfg, providers)
        raws = run_rounds(tasks, cfg.rounds, measure, on_progress)
    report_rows = [row for row, _, _ in rows]
    for task, raw in zip(tasks, raws):
        report_rows[task.row].results.append(summarise(raw, task.threads, task.batch_size))
    relative(report_rows)
    return BenchReport(_environment(cfg, providers), _settings(cfg, data), report_rows, notes + _notes(report_rows, cfg))
