"""Interleaved rounds and their statistics (issue 13): the measuring order, paired per-round
ratios under a load that changes between rounds (driven by a fake clock), the order-statistics
interval, the unstable flag, and the timeout of a real worker process."""
from __future__ import annotations

import math
import statistics

import pytest

from rtdeploy.bench import BenchConfig, Task, bench_models, median_ci95, paired_speedup, run_rounds
from rtdeploy.bench.runner import relative, summarise
from rtdeploy.bench.stats import interval_rank
from rtdeploy.bench.worker import MeasureTimeout, _stopwatch
from rtdeploy.errors import ConfigError

from test_export import make_checkpoint


class FakeClock:
    """time.perf_counter stand-in: advances only when a fake model 'runs'."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def model(self, cost_s: float, load: callable):
        def run():
            self.now += cost_s * load()
        return run


def _tasks(names: list[str], settings: list[tuple[int, int]]) -> list[Task]:
    return [Task(i, t, b, {"name": n}, f"{n}, batch {b}, {t} thread(s)")
            for t, b in settings for i, n in enumerate(names)]


def test_rounds_visit_every_model_and_setting_in_turn():
    calls = []
    tasks = _tasks(["A", "B"], [(1, 1), (1, 32)])
    run_rounds(tasks, 3, lambda task, r: calls.append((r, task.spec["name"], task.batch_size)) or {})
    assert calls == [(r, name, b) for r in range(3) for b in (1, 32) for name in ("A", "B")]
    assert [c[1] for c in calls[:4]] == ["A", "B", "A", "B"]


def _fake_measure(clock: FakeClock, costs: dict[str, float], loads: list[float], runs: int = 20):
    """measure(task, round): `runs` timed runs of a fake model whose cost is scaled by the round's load."""
    def measure(task, r):
        fn = clock.model(costs[task.spec["name"]], lambda: loads[r])
        lat = _stopwatch(fn, warmup=2, runs=runs, seconds=None, clock=clock)
        return {"latencies_ms": lat, "session_ms": 1.0, "first_ms": 1.0, "provider": "fake"}
    return measure


def test_paired_ratio_survives_a_load_that_changes_between_rounds():
    """The load doubles and halves between rounds; each round slows A and B alike, so every paired
    ratio is exactly the true 4x, while the rounds' medians of each model spread widely."""
    clock, loads = FakeClock(), [1.0, 2.0, 0.5, 3.0, 1.0, 1.5, 0.8, 2.5, 1.2, 1.0]
    tasks = _tasks(["A", "B"], [(1, 1)])
    raws = run_rounds(tasks, len(loads), _fake_measure(clock, {"A": 0.008, "B": 0.002}, loads))
    rows = [type("Row", (), {"macs": m, "results": [summarise(raw, 1, 1)], "mac_ratio": None})()
            for m, raw in zip((8, 2), raws)]
    relative(rows)
    a, b = rows[0].results[0], rows[1].results[0]
    assert [r.p50_ms for r in a.rounds] == pytest.approx([8.0 * x for x in loads])
    assert b.speedup.median == pytest.approx(4.0) and b.speedup.ci95 == pytest.approx([4.0, 4.0])
    assert b.speedup.rounds == 10 and b.speedup.unstable is False
    assert a.speedup.median == pytest.approx(1.0)
    assert a.cv == pytest.approx(statistics.stdev([8 * x for x in loads]) / statistics.fmean([8 * x for x in loads]))
    assert a.cv > 0.4  # the unpaired latencies are all over the place
    assert a.latency_ms.p50 == pytest.approx(statistics.median(8.0 * x for x in loads))
    assert a.runs == 20 * len(loads) and rows[1].mac_ratio == 4.0


def test_noisy_pairs_give_the_order_statistics_interval_and_the_unstable_flag():
    """Per-round ratios 3.0..4.8 (A's load differs from B's within a round): the interval is the
    2nd smallest .. 2nd largest of 10 ratios, and 1.8 wide on a median of ~3.9 is unstable."""
    ratios = [3.0 + 0.2 * i for i in range(10)]
    base = [4.0 * r for r in ratios]
    s = paired_speedup(base, [4.0] * 10)
    assert s.median == pytest.approx(statistics.median(ratios))
    assert s.ci95 == pytest.approx([ratios[1], ratios[8]])
    assert s.unstable is True


def test_interval_rank_and_coverage():
    assert interval_rank(5) is None and interval_rank(6) == 1 and interval_rank(10) == 2 and interval_rank(20) == 6
    for n in range(6, 60):
        k = interval_rank(n)
        covered = 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n
        wider = 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
        assert covered >= 0.95 > wider
    med, ci = median_ci95([5.0, 1.0, 3.0])
    assert med == 3.0 and ci is None
    assert paired_speedup([2.0] * 3, [1.0] * 3).unstable is None


def test_stopwatch_gives_up_past_its_deadline():
    clock = FakeClock()
    with pytest.raises(MeasureTimeout):
        _stopwatch(clock.model(1.0, lambda: 1.0), warmup=0, runs=100, seconds=None, clock=clock, give_up_at=5.0)
    assert clock.now == 6.0  # stopped right after the run that crossed the deadline


@pytest.mark.parametrize("kwargs,flag", [
    ({"seconds": math.inf}, "--seconds"), ({"seconds": math.nan}, "--seconds"), ({"seconds": 601}, "--seconds"),
    ({"threads": (10_000,)}, "--threads"), ({"runs": 10**7}, "--runs"), ({"rounds": 0}, "--rounds"),
    ({"timeout_s": math.nan}, "--timeout"), ({"timeout_s": 5, "seconds": 10}, "--timeout"),
    ({"batch_sizes": (5000,)}, "--batch-sizes"), ({"cpus": (99999,)}, "--cpus"), ({"fp16": True}, "--fp16"),
    ({"warmup": 10**6}, "--warmup"),
])
def test_unbounded_settings_are_refused_naming_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        BenchConfig(**kwargs)


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    from rtdeploy.export import export_checkpoint

    d = tmp_path_factory.mktemp("rounds")
    export_checkpoint(make_checkpoint(d / "base.pt"), d / "base.onnx")
    export_checkpoint(make_checkpoint(d / "pruned.pt", pruned=True), d / "pruned.onnx")
    return d / "base.onnx", d / "pruned.onnx"


def test_real_rounds_report_rounds_and_interval(onnx_pair):
    r = bench_models(list(onnx_pair), BenchConfig(runs=3, warmup=1, rounds=6, isolate=False))
    pruned = r.models[1].results[0]
    assert len(pruned.rounds) == 6 and pruned.runs == 18
    assert pruned.speedup.ci95[0] <= pruned.speedup.median <= pruned.speedup.ci95[1]
    assert r.settings["rounds"] == 6 and "order statistics" in r.settings["speedup_method"]


def test_a_measurement_past_its_timeout_ends_in_one_line_naming_model_and_setting(onnx_pair, cli):
    """A real worker process, far too many runs for a 1.5 s timeout: killed, one line, exit 1."""
    code, _, err = cli("bench", onnx_pair[1], "--runs", "1000000", "--rounds", "1", "--batch-sizes", "2",
                       "--timeout", "1.5")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("rtdeploy: error: measuring pruned, batch 2, 1 thread(s), round 1/1")
    assert "--timeout 1.5 s" in lines[0]
