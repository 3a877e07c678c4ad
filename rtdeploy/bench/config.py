"""BenchConfig: what `rtdeploy bench` measures, every value checked and bounded before any work.

Everything a user can set is bounded, so no setting can make bench run (or spawn threads)
without end: threads by the CPUs this process may use, seconds and the per-measurement timeout
by documented caps, counts by caps far above any useful value. Non-finite numbers are refused.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ..errors import ConfigError

PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}
GRAPH_OPT = ("disable", "basic", "extended", "all")
MAX_SECONDS = 600.0          # --seconds: ten minutes of timing per model, setting and round
MAX_TIMEOUT_S = 3600.0       # --timeout: one measurement may take an hour at most
MAX_RUNS, MAX_WARMUP, MAX_ROUNDS, MAX_BATCH = 1_000_000, 100_000, 1000, 4096
MAX_CPU = 65535             # --cpus: Linux's CPU numbers stay far below (NR_CPUS <= 8192)
MAX_INPUT_BYTES = 1 << 30    # one input batch (float32) may take 1 GiB
DEFAULT_TIMEOUT_S = 300.0


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask; all CPUs where that is unknown)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def parse_cpus(text: str) -> tuple[int, ...]:
    """'0,2-3' -> (0, 2, 3) for --cpus; ConfigError naming the flag otherwise."""
    out: set[int] = set()  # a set: '0-65535' repeated 10000 times in one argument stays 65536 numbers
    try:
        for part in (p for p in text.replace(" ", "").split(",") if p):
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi or lo)
            if not 0 <= first <= last <= MAX_CPU:
                raise ValueError
            out.update(range(first, last + 1))
    except ValueError:
        raise ConfigError(f"--cpus must be CPU numbers (0..{MAX_CPU}) or ranges such as 0,2-3; "
                          f"got {_clip(text)!r}") from None
    if not out:
        raise ConfigError("--cpus must list at least one CPU, e.g. 0 or 0-3")
    return tuple(sorted(out))


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_int(flag: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{flag} must be an integer from {low} to {high:,}, got {value!r}")


def _check_seconds(flag: str, value, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= high:
        raise ConfigError(f"{flag} must be a number of seconds > 0 and <= {high:g}, got {value!r}")


@dataclass
class BenchConfig:
    """`rounds` interleaved rounds; in each, every model at every setting gets `warmup` untimed
    and `runs` timed runs (or `seconds` of them), in a fresh process unless isolate=False."""

    provider: str = "cpu"
    batch_sizes: tuple[int, ...] = (1,)
    threads: tuple[int, ...] = (1,)
    warmup: int = 10
    runs: int = 50
    seconds: float | None = None   # time-boxed runs instead of a fixed count
    rounds: int = 10               # >= 6 for a 95 % interval of the speed-up
    graph_opt: str = "all"
    torch: bool = False            # add a PyTorch eager row for each checkpoint
    isolate: bool = True           # a process per measurement (else in-process, spinning off)
    timeout_s: float = DEFAULT_TIMEOUT_S  # per measurement (one model, setting and round)
    cpus: tuple[int, ...] | None = None   # pin the measuring process to these CPUs
    fp16: bool = False             # GPU providers only

    def __post_init__(self):
        self.batch_sizes, self.threads = tuple(self.batch_sizes), tuple(self.threads)
        self.cpus = tuple(self.cpus) if self.cpus is not None else None
        if self.provider not in PROVIDERS:
            raise ConfigError(f"--provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        if self.graph_opt not in GRAPH_OPT:
            raise ConfigError(f"--graph-opt must be one of {', '.join(GRAPH_OPT)}, got {self.graph_opt!r}")
        self._check_lists()
        _check_int("--warmup", self.warmup, 0, MAX_WARMUP)
        _check_int("--runs", self.runs, 1, MAX_RUNS)
        _check_int("--rounds", self.rounds, 1, MAX_ROUNDS)
        if self.seconds is not None:
            _check_seconds("--seconds", self.seconds, MAX_SECONDS)
        _check_seconds("--timeout", self.timeout_s, MAX_TIMEOUT_S)
        if self.seconds is not None and self.timeout_s <= self.seconds:
            raise ConfigError(f"--timeout ({self.timeout_s:g} s) must be longer than --seconds ({self.seconds:g} s)")
        if self.fp16 and self.provider == "cpu":
            raise ConfigError("--fp16 is for --provider cuda or tensorrt; on CPU, bench an INT8 model made by 'rtdeploy export' instead")

    def _check_lists(self) -> None:
        for flag, values, high in (("--batch-sizes", self.batch_sizes, MAX_BATCH), ("--threads", self.threads, 4096)):
            if not values:
                raise ConfigError(f"{flag} must list at least one integer, e.g. 1")
            for v in values:
                _check_int(flag, v, 1, high)
        cpus = usable_cpus()
        if self.cpus is not None:
            outside = sorted(set(self.cpus) - cpus)
            if not self.cpus or outside:
                raise ConfigError(f"--cpus {_clip(','.join(map(str, outside or self.cpus)))}: this process may use CPUs "
                                  f"{','.join(map(str, sorted(cpus)))} only")
        limit = len(self.cpus) if self.cpus else len(cpus)
        if max(self.threads) > limit:
            raise ConfigError(f"--threads {max(self.threads)}: more threads than the {limit} CPU(s) available "
                              f"{'in --cpus' if self.cpus else 'to this process'} only slows every run; use at most {limit}")
