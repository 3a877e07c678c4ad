"""`compress --target-latency-ms`: search the pruning ratio so that the exported model meets a
latency measured on this machine, before any fine-tuning.

Latency depends on the widths (and the runtime), not on the weights, so each candidate ratio is
pruned on a copy, exported to ONNX, simplified, and timed under ONNX Runtime with the target's
provider, threads and inference batch size, exactly as `rtdeploy bench` would run it. Latency
falls as the ratio grows (fewer channels), so the search bisects the ratio and keeps the
smallest one whose measured latency meets the target: the most channels that fit.

Timing: each candidate gets `rounds` rounds of `runs` runs in this process (thread spinning off,
like bench --in-process); its latency is the median of the round medians. The target's absolute
latency is only as stable as the machine: the report keeps every trial so a user can judge.
"""
from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

_STEPS = 7            # bisection steps after the bracket: ratio resolution 0.95 / 2^7 ~ 0.007
MAX_RATIO = 0.95
LATENCY_PROVIDERS = ("cpu", "cuda", "tensorrt")


@dataclass
class LatencyTarget:
    """The latency to meet and how it is measured (--latency-provider/-threads/-batch)."""

    ms: float
    provider: str = "cpu"
    threads: int = 1
    batch: int = 1
    rounds: int = 5
    runs: int = 30
    warmup: int = 5
    exporter: str = "dynamo"

    def __post_init__(self):
        if isinstance(self.ms, bool) or not isinstance(self.ms, (int, float)) or not math.isfinite(self.ms) \
                or not 0 < self.ms <= 1e6:
            raise ConfigError(f"--target-latency-ms must be a number of milliseconds > 0, got {self.ms!r}")
        if self.provider not in LATENCY_PROVIDERS:
            raise ConfigError(f"--latency-provider must be one of {', '.join(LATENCY_PROVIDERS)}, got {self.provider!r}")
        from ..bench.config import BenchConfig

        try:  # the same bounds as bench (threads <= CPUs, ...), reported under compress's flag names
            BenchConfig(provider="cpu", threads=(self.threads,), batch_sizes=(self.batch,), rounds=self.rounds,
                        runs=self.runs, warmup=self.warmup)
        except ConfigError as e:
            text = str(e).replace("--threads", "--latency-threads").replace("--batch-sizes", "--latency-batch")
            raise ConfigError(text) from None

    def describe(self) -> dict:
        return asdict(self) | {"timing": "in-process ONNX Runtime, median of round medians"}


def _graph(model: nn.Module, img_size: int, target: LatencyTarget) -> bytes:
    from ..export.onnx_export import DEFAULT_OPSETS, simplify, to_onnx

    graph = to_onnx(model, img_size, opset=DEFAULT_OPSETS[target.exporter], dynamic_batch=True, exporter=target.exporter)
    return simplify(graph, "onnxsim")[0].SerializeToString()


def measure_latency(model: nn.Module, img_size: int, target: LatencyTarget) -> float:
    """Median over rounds of the per-round median latency (ms) of `model` exported to ONNX."""
    import tempfile
    from pathlib import Path

    from ..bench.config import PROVIDERS
    from ..bench.worker import measure

    from ..bench.runner import check_provider

    providers = check_provider(target.provider) if target.provider != "cpu" else PROVIDERS["cpu"]
    with tempfile.TemporaryDirectory(prefix="rtdeploy-latency-") as tmp:
        path = Path(tmp) / "candidate.onnx"
        path.write_bytes(_graph(model, img_size, target))
        spec = {"kind": "onnx", "path": str(path), "input_name": "input", "shape": [3, img_size, img_size],
                "batch_size": target.batch, "threads": target.threads, "warmup": target.warmup, "runs": target.runs,
                "seconds": None, "providers": providers, "graph_opt": "all", "spinning": False, "cpus": None,
                "deadline_s": 600.0, "fp16": False}
        medians = [statistics.median(measure(spec)["latencies_ms"]) for _ in range(target.rounds)]
    return statistics.median(medians)


def _top_ratio(model: nn.Module) -> float:
    """The largest ratio searched: MAX_RATIO, or less where a narrow layer would otherwise lose
    every channel (local scope keeps int(C * (1 - ratio)) of C)."""
    from .pruner import conv_widths

    narrowest = min((c for c in conv_widths(model).values() if c > 1), default=2)
    return min(MAX_RATIO, (1 - 1 / narrowest) * (1 - 1e-6))


def search_latency(model: nn.Module, prune: Callable[[nn.Module, float], nn.Module], example_inputs: torch.Tensor,
                   target: LatencyTarget, macs0: int) -> tuple[float, list[dict]]:
    """(ratio, trials): the smallest ratio (bisection) whose pruned, exported model meets target.ms.

    `prune(model, ratio)` returns a pruned copy. ConfigError when even MAX_RATIO is too slow."""
    from ..models.complexity import count_macs_params

    img_size = example_inputs.shape[-1]
    trials: list[dict] = []

    def trial(ratio: float) -> bool:
        try:
            pruned = prune(model, ratio)
        except ConfigError:  # this ratio would empty a layer
            return False
        ms = measure_latency(pruned, img_size, target)
        macs = count_macs_params(pruned, img_size)[0]
        trials.append({"ratio": round(ratio, 6), "macs_fraction": macs / macs0, "latency_ms": ms, "meets": ms <= target.ms})
        log.info("--target-latency-ms %g: ratio %.4f -> %.3f ms", target.ms, ratio, ms)
        return ms <= target.ms

    top = _top_ratio(model)
    if not trial(top):
        got = f"runs in {trials[-1]['latency_ms']:.3g} ms" if trials else "cannot be pruned"
        raise ConfigError(f"--target-latency-ms {target.ms:g}: even --ratio {top:.3g} {got} "
                          f"({target.provider}, {target.threads} thread(s), batch {target.batch}); "
                          "raise the target or use more --latency-threads")
    lo, hi = 0.0, top
    for _ in range(_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if trial(mid) else (mid, hi)
    return hi, trials
