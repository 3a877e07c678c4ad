"""--round-to auto on stubbed CPU descriptions, and --target-latency-ms on the tiny model with
real exports and real ONNX Runtime timings (issue 13)."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from rtdeploy.errors import ConfigError
from rtdeploy.models import create_model
from rtdeploy.prune import PruneConfig, prune_model
from rtdeploy.prune import target as target_mod
from rtdeploy.prune.latency import LatencyTarget, measure_latency
from rtdeploy.prune.pruner import _prune_trial, conv_widths

CPUS = {
    "xeon-avx512": ("Intel(R) Xeon(R) Platinum 8480+", "fpu sse2 avx avx2 fma avx512f avx512_vnni amx_tile", 16, "AVX-512"),
    "epyc-avx2": ("AMD EPYC 7B13", "fpu sse2 avx avx2 fma", 8, "AVX2"),
    "arm-neon": ("Neoverse-N1", "fp asimd evtstrm aes", 4, "NEON"),
    "unknown": ("Mystery CPU", "fpu", 8, "no known SIMD flags"),
}


def _cpuinfo(tmp_path, name: str) -> str:
    model, flags, _, _ = CPUS[name]
    key = "Features" if "asimd" in flags else "flags"
    path = tmp_path / f"{name}.cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: {model}\n{key}\t\t: {flags}\n\nprocessor\t: 1\n")
    return str(path)


@pytest.mark.parametrize("name", sorted(CPUS))
def test_round_to_auto_follows_the_cpu_description(tmp_path, monkeypatch, name):
    monkeypatch.setattr(target_mod, "CPUINFO", _cpuinfo(tmp_path, name))
    model_name, _, multiple, why = CPUS[name]
    cfg = PruneConfig(ratio=0.5, round_to="auto")
    assert cfg.round_to == multiple and why in cfg.round_to_reason and model_name in cfg.round_to_reason
    model = create_model("tiny", 3)
    report = prune_model(model, "l1", torch.zeros(1, 3, 16, 16), cfg)
    assert report.round_to == multiple and report.round_to_reason == cfg.round_to_reason
    assert all(w % multiple == 0 or w < multiple for w in report.widths_after.values())


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_round_to_auto_for_gpu_targets_uses_tensor_core_multiples(tmp_path, monkeypatch, provider):
    monkeypatch.setattr(target_mod, "CPUINFO", _cpuinfo(tmp_path, "arm-neon"))  # the host CPU does not matter
    cfg = PruneConfig(round_to="auto", round_to_target=provider)
    assert cfg.round_to == 8 and "tensor cores" in cfg.round_to_reason


@pytest.mark.parametrize("value", ["fast", "0", "-8", 0, 10**6])
def test_bad_round_to_names_the_flag(value):
    with pytest.raises(ConfigError, match="--round-to"):
        PruneConfig(round_to=value)


@pytest.mark.parametrize("kwargs,flag", [({"ms": math.nan}, "--target-latency-ms"), ({"ms": math.inf}, "--target-latency-ms"),
                                         ({"ms": -1}, "--target-latency-ms"), ({"ms": 1, "threads": 10_000}, "--latency-threads"),
                                         ({"ms": 1, "provider": "tpu"}, "--latency-provider"),
                                         ({"ms": 1, "batch": 0}, "--latency-batch")])
def test_latency_target_is_checked(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        LatencyTarget(**kwargs)


def test_target_latency_lands_between_two_measured_candidates():
    """Time the tiny model pruned at 0.05 and at 0.9, ask for a latency in between (geometric mean),
    and check the search picks a ratio between them whose exported model meets the target.

    The goal is an absolute latency fixed before the search re-measures, so a change of machine
    load in between moves the answer: identical measurements here differed by up to 1.8x under
    the other test worker's load (ratio 0.9: 0.47 vs 0.25 ms). With the old candidates 0.2 and 0.8
    (~2.5 vs ~0.8 ms, the goal ~1.8x from each) a search timed 2x faster or 2.2x slower than the
    candidates (latencies scaled by hand) ended outside (0.2, 0.8); 0.05 and 0.9 (~4.5 vs ~0.47
    ms, the goal ~3x from each) stayed inside for 0.4x..2.2x. slow > 4 x fast keeps the goal at
    least 2x from either candidate; the candidates are timed alternately, median of three, so that
    a burst of load does not land on one of them only."""
    torch.manual_seed(0)
    size = 96  # big enough that compute, not call overhead, decides the latency
    model, example = create_model("tiny", 3).eval(), torch.zeros(1, 3, size, size)
    timing = LatencyTarget(1.0, rounds=5, runs=20, exporter="torchscript")  # ms is replaced below
    cfg = PruneConfig(round_to=1)
    low, high = 0.05, 0.9
    candidates = {r: _prune_trial(model, "l1", example, cfg, r, 0) for r in (low, high)}
    times = {r: [] for r in candidates}
    for _ in range(3):
        for r, pruned in candidates.items():
            times[r].append(measure_latency(pruned, size, timing))
    slow, fast = statistics.median(times[low]), statistics.median(times[high])
    assert slow > 4 * fast, times  # else the candidates are too close to test between
    goal = math.sqrt(slow * fast)
    target = LatencyTarget(goal, rounds=5, runs=20, exporter="torchscript")
    report = prune_model(model, "l1", example, PruneConfig(round_to=1, target_latency=target))
    assert low < report.ratio < high, (report.ratio, slow, fast, goal, report.search)
    chosen = next(t for t in report.search if t["ratio"] == round(report.ratio, 6))
    assert chosen["meets"] and chosen["latency_ms"] <= goal
    assert all(t["latency_ms"] > 0 and 0 < t["macs_fraction"] < 1 for t in report.search)
    assert report.target_latency["ms"] == goal and report.target_latency["threads"] == 1
    # the model returned is the structure that was timed (re-timing it would only re-measure the load)
    assert report.macs_fraction == pytest.approx(chosen["macs_fraction"])
    assert min(conv_widths(model).values()) >= 1


@pytest.mark.parametrize("args,flag", [
    (["--target-latency-ms", "nan"], "--target-latency-ms"), (["--target-latency-ms", "inf"], "--target-latency-ms"),
    (["--target-latency-ms", "5", "--ratio", "0.5"], "--target-latency-ms"),
    (["--target-latency-ms", "5", "--latency-threads", "10000"], "--latency-threads"),
    (["--target-latency-ms", "5", "--latency-batch", "0"], "--latency-batch"),
    (["--target-latency-ms", "5", "--latency-provider", "npu"], "--latency-provider"),
    (["--round-to", "fast"], "--round-to"),
])
def test_cli_compress_latency_options_exit_2_naming_the_flag(cli, tmp_path, args, flag):
    code, _, err = cli("compress", tmp_path / "base.pt", "--out", tmp_path / "p.pt", *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rtdeploy: error:") and flag in lines[0], err
    assert not (tmp_path / "p.pt").exists()
