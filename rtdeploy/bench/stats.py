"""Statistics of interleaved rounds: a median per model, the speed-up as the median of paired
per-round ratios with a distribution-free 95 % interval, and the run-to-run spread.

Why paired ratios: on a shared machine the load changes from second to second. Within one round
the models are measured back to back (A B A B ...), so a slow round slows both and their ratio
survives; the ratio of two medians taken at different times does not (issue 13: 5.9x-10.6x over
six one-shot runs, 7.5x-8.4x per round when interleaved).

Why order statistics: the per-round ratios are not normal (load spikes give long tails), so the
interval is the classic sign-test interval of the median (e.g. Conover, Practical Nonparametric
Statistics, 3.2): with n independent rounds, the k-th smallest and k-th largest ratio bracket the
true median with probability 1 - 2 P(Binomial(n, 1/2) < k), and k is the largest rank for which
that is still >= 95 %. No interval exists below 6 rounds (min..max covers only 1 - 2/2^n).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

MIN_ROUNDS_FOR_CI = 6
UNSTABLE_WIDTH = 0.10  # interval wider than 10 % of the median: the ratio is not reproducible
INTERVAL_METHOD = ("median of paired per-round ratios; 95 % interval from order statistics "
                   "(sign-test interval of the median, distribution-free, needs >= 6 rounds)")


@dataclass
class Speedup:
    """Baseline latency / this latency, paired by round. ci95 is None below MIN_ROUNDS_FOR_CI rounds."""

    median: float
    ci95: list[float] | None
    rounds: int
    unstable: bool | None          # None: too few rounds to tell

    def __format__(self, spec: str) -> str:  # f"{s:.2f}" formats the median (older call sites)
        return format(self.median, spec)

    def __float__(self) -> float:
        return float(self.median)


def _binom_cdf_half(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n


def interval_rank(n: int, level: float = 0.95) -> int | None:
    """The 1-based rank k so that [x_(k), x_(n+1-k)] covers the median with >= `level`; None if none does."""
    best = None
    for k in range(1, n // 2 + 1):
        if 1 - 2 * _binom_cdf_half(k - 1, n) >= level:
            best = k
        else:
            break
    return best


def median_ci95(values: list[float]) -> tuple[float, list[float] | None]:
    """(median, [lo, hi]) with the order-statistics interval, or (median, None) when too few values."""
    if not values:
        raise ValueError("no values")
    xs = sorted(values)
    k = interval_rank(len(xs))
    return statistics.median(xs), (None if k is None else [xs[k - 1], xs[len(xs) - k]])


def cv(values: list[float]) -> float:
    """Coefficient of variation (sample std / mean); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else math.nan


def paired_speedup(base: list[float], other: list[float]) -> Speedup | None:
    """Speed-up of `other` over `base` from their per-round latencies (same rounds, same order)."""
    ratios = [b / o for b, o in zip(base, other) if b > 0 and o > 0]
    if not ratios or len(base) != len(other):
        return None
    med, ci = median_ci95(ratios)
    unstable = None if ci is None else (ci[1] - ci[0]) / med > UNSTABLE_WIDTH
    return Speedup(med, ci, len(ratios), unstable)
