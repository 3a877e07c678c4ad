"""Figures for bench reports: latency and accuracy against MACs, one labelled point per model.

matplotlib is optional (the `plot` extra) and imported only here, only when a plot is asked for.
"""
from __future__ import annotations

import os

from .errors import ConfigError
from .fsutil import atomic_path
from .report import as_dict


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ConfigError("--plot needs matplotlib: pip install 'rtdeploy[plot]'") from e
    matplotlib.use("Agg")  # files only, never a window (works over SSH and in CI)
    import matplotlib.pyplot as plt

    return plt


def plot_points(report, batch_size: int | None = None, threads: int | None = None) -> list[dict]:
    """One point per model: {name, macs, p50_ms, accuracy} at one (batch size, threads) setting,
    by default the smallest batch and the first thread count measured."""
    models = as_dict(report)["models"]
    results = [r for m in models for r in m["results"]]
    if not results:
        return []
    batch_size = batch_size or min(r["batch_size"] for r in results)
    threads = threads or results[0]["threads"]
    points = []
    for m in models:
        hit = next((r for r in m["results"] if r["batch_size"] == batch_size and r["threads"] == threads), None)
        if hit and m["macs"]:
            points.append({"name": m["name"], "macs": m["macs"], "p50_ms": hit["latency_ms"]["p50"],
                           "accuracy": m["accuracy"], "batch_size": batch_size, "threads": threads})
    return points


def _scatter(ax, points, key: str, scale: float, ylabel: str) -> None:
    pts = [(i, p) for i, p in enumerate(points) if p[key] is not None]
    for i, p in pts:  # colour by model index, so a model has the same colour in both panels
        ax.scatter(p["macs"], p[key] * scale, s=36, color=f"C{i % 10}")
        ax.annotate(p["name"], (p["macs"], p[key] * scale), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if not pts:
        ax.text(0.5, 0.5, "not measured (pass --data)", ha="center", va="center", transform=ax.transAxes)


def plot_bench(report, path: str | os.PathLike, batch_size: int | None = None, threads: int | None = None) -> None:
    """Write a PNG: p50 latency vs MACs (left) and accuracy vs MACs (right)."""
    plt = _pyplot()
    points = plot_points(report, batch_size, threads)
    if not points:
        raise ConfigError("--plot: the report has no measurements to plot")
    fig, (lat_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    _scatter(lat_ax, points, "p50_ms", 1.0, "p50 latency (ms)")
    lat_ax.set_title(f"latency, batch {points[0]['batch_size']}, {points[0]['threads']} thread(s)")
    _scatter(acc_ax, points, "accuracy", 100.0, "test accuracy (%)")
    acc_ax.set_title("accuracy")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
