"""`rtdeploy bench`: models side by side under ONNX Runtime (table, JSON, Markdown, plot)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .. import report as fmt
from ..errors import ConfigError, RtdeployError
from ..fsutil import plan_outputs, write_text
from .app import app
from .common import Data, DataRoot, Force, JsonOut, console, data_input, err_console, load_every_image, progress


def int_list(text: str, flag: str) -> tuple[int, ...]:
    """'1,32' -> (1, 32); anything else is a ConfigError naming the flag."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, e.g. 1,2; got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} must list at least one integer, e.g. 1,32")
    return values


class BenchInterrupted(RtdeployError):
    """Ctrl-C or SIGTERM during bench: exit 130. Bench has no --resume; nothing was written."""

    exit_code = 130


@app.command()
def bench(
    models: Annotated[list[Path], typer.Argument(help=".onnx files or rtdeploy checkpoints (exported on the fly); the first is the baseline.")],
    provider: Annotated[str, typer.Option("--provider", help="cpu, cuda or tensorrt (ONNX Runtime execution provider).")] = "cpu",
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes, e.g. 1,32.")] = "1",
    threads: Annotated[str, typer.Option("--threads", help="Intra-op threads; a list such as 1,2 measures each.")] = "1",
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs before timing.")] = 10,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs per model, setting and round.")] = 50,
    seconds: Annotated[Optional[float], typer.Option("--seconds", help="Time each model, setting and round for this long (at most 600) instead of --runs.")] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved rounds (A B A B ...); the speed-up is the median of per-round ratios, with a 95 % interval from 6 rounds on.")] = 10,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds one measurement (one model, setting and round) may take before bench stops.")] = 300.0,
    cpus: Annotated[Optional[str], typer.Option("--cpus", help="Pin the measuring processes to these CPUs, e.g. 2 or 2-3 (Linux).")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="GPU providers: FP16 (TensorRT FP16 engines; the graph converted to FP16 for CUDA).")] = False,
    data: Data = None, data_root: DataRoot = None,
    torch: Annotated[bool, typer.Option("--torch", help="Add a PyTorch eager row for each checkpoint.")] = False,
    graph_opt: Annotated[str, typer.Option("--graph-opt", help="ONNX Runtime graph optimisation: disable, basic, extended, all.")] = "all",
    isolate: Annotated[bool, typer.Option("--isolate/--in-process", help="A fresh process per measurement (honest), or all in this one with thread spinning off (faster to run).")] = True,
    json_out: JsonOut = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Also write the tables as Markdown.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw latency and accuracy against MACs (PNG; needs matplotlib).")] = None,
    force: Force = False,
):
    """Measure models side by side under ONNX Runtime: session creation, first inference,
    p50/p90/p99/mean latency, throughput, params, MACs, size and (with --data) accuracy on each
    model's own test split. Models and settings are measured in interleaved rounds, each
    measurement alone in its own process. Speed-up is the median over rounds of the first
    model's latency over each model's (same round, threads and batch size), with its 95 %
    interval and the MAC ratio (first model's MACs over each model's) beside it; '!' marks an
    unstable one (interval wider than 10 %). GPU providers report device-only and end-to-end
    latency (I/O binding).

    Example: rtdeploy bench runs/base.onnx runs/pruned.onnx --batch-sizes 1,32 --threads 1,2 --data sample --json bench.json --plot bench.png
    """
    from ..bench import BenchConfig, bench_models, parse_cpus

    cfg = BenchConfig(provider=provider, batch_sizes=int_list(batch_sizes, "--batch-sizes"),
                      threads=int_list(threads, "--threads"), warmup=warmup, runs=runs, seconds=seconds,
                      rounds=rounds, graph_opt=graph_opt, torch=torch, isolate=isolate, timeout_s=timeout,
                      cpus=parse_cpus(cpus) if cpus is not None else None, fp16=fp16)
    plan_outputs([*models, data_input(data)], {"--json": json_out, "--markdown": markdown, "--plot": plot}, force=force)
    if plot:
        from ..plots import _pyplot

        _pyplot()  # a missing matplotlib fails now, not after the measurements
    try:
        with _bars() as (on_stage, on_progress):
            r = bench_models(models, cfg, data=data, data_root=data_root, load=load_every_image,
                             on_stage=on_stage, on_progress=on_progress)
    except KeyboardInterrupt:
        raise BenchInterrupted("interrupted; no results were written (bench keeps nothing to resume: "
                               "run it again, with fewer --rounds or --runs for a shorter run)") from None
    summary, latency = summary_rows(r), latency_rows(r)
    console.print(fmt.rich_table(_escaped(summary), title="models"))
    console.print(fmt.rich_table(_escaped(latency), title=f"latency ({r.environment['provider']}, {cfg.rounds} interleaved "
                                                 f"round(s) of warm-up {cfg.warmup} + {r.settings['runs'] or str(cfg.seconds) + ' s of'} runs)"))
    console.print(environment_line(r), markup=False, highlight=False)
    for note in r.notes:
        err_console.print(f"note: {note}")
    if json_out:
        write_text(json_out, fmt.to_json(r))
    if markdown:
        write_text(markdown, markdown_report(r))
    if plot:
        from ..plots import plot_bench

        plot_bench(r, plot)


def _escaped(rows: list[dict]) -> list[dict]:
    """File names may hold '[...]', which rich would read as markup."""
    return [{k: escape(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]


@contextlib.contextmanager
def _bars():
    """(on_stage, on_progress): a transient status line while models are prepared, then one bar
    over the measurements. Nothing stays on screen before the first measurement, so an input
    error found while preparing prints only its own line."""
    with contextlib.ExitStack() as stack:
        status = bar = task = None

        def on_stage(text: str):
            nonlocal status
            if status is None:
                status = stack.enter_context(err_console.status(escape(text)))
            status.update(escape(text))

        def on_progress(done: int, total: int, label: str):
            nonlocal bar, task, status
            if status is not None:
                status.stop()
                status = None
            if bar is None:
                bar = stack.enter_context(progress(transient=True))  # an error then stays one line
                task = bar.add_task("bench", total=total, info="")
            bar.update(task, completed=done, info=escape(label))

        yield on_stage, on_progress


def _engine(m) -> str:
    return "torch eager" if m.runtime == "torch" else f"ORT {m.precision or '?'}"


def _count(onnx_count, torch_count) -> str:
    text = fmt.human_count(onnx_count)
    return f"{text} (torch {fmt.human_count(torch_count)})" if torch_count is not None else text


def summary_rows(r) -> list[dict]:
    """One row per model: what it is and costs; cold start at the first setting measured."""
    return [{"model": m.name, "engine": _engine(m), "params": _count(m.params, m.torch_params),
             "MACs": _count(m.macs, m.torch_macs), "MAC ratio": f"{m.mac_ratio:.2f}x" if m.mac_ratio else "-",
             "size": f"{m.size_bytes / 1e6:.2f} MB", "accuracy": fmt.pct(m.accuracy),
             "load ms": f"{m.results[0].session_ms:.1f}" if m.results else "-",
             "1st run ms": f"{m.results[0].first_inference_ms:.2f}" if m.results else "-"} for m in r.models]


def speedup_text(s) -> str:
    """'7.95x [7.50-8.40]' (median and 95 % interval), '!' when unstable; '-' when not measured."""
    if s is None:
        return "-"
    text = f"{s.median:.2f}x" + (f" [{s.ci95[0]:.2f}-{s.ci95[1]:.2f}]" if s.ci95 else "")
    return text + (" !" if s.unstable else "")


def latency_rows(r) -> list[dict]:
    """One row per model and setting; speed-up against the first model with the MAC ratio beside it."""
    rows = []
    for m in r.models:
        for x in m.results:
            row = {"model": m.name, "threads": x.threads, "batch": x.batch_size,
                   "p50 ms": f"{x.latency_ms.p50:.3f}", "p90 ms": f"{x.latency_ms.p90:.3f}",
                   "p99 ms": f"{x.latency_ms.p99:.3f}", "mean ms": f"{x.latency_ms.mean:.3f}"}
            if x.device_latency_ms is not None:
                row["device p50 ms"] = f"{x.device_latency_ms.p50:.3f}"
            rows.append(row | {"img/s": f"{x.throughput_ips:,.0f}", "CV": f"{100 * x.cv:.1f} %",
                               "speed-up [95 % CI]": speedup_text(x.speedup),
                               "MAC ratio": f"{m.mac_ratio:.2f}x" if m.mac_ratio else "-"})
    return rows


def environment_line(r) -> str:
    e = r.environment
    return (f"{e['machine']['cpu']} ({e['machine']['cores']} cores; {', '.join(e['machine']['cpu_flags']) or 'no SIMD flags'}), "
            f"onnxruntime {e['versions'].get('onnxruntime', '?')}, graph optimisation {e['graph_optimization_level']}, "
            f"{e['isolation']}" + (f", pinned to CPUs {','.join(map(str, e['cpus']))}" if e.get("cpus") else ""))


def markdown_report(r) -> str:
    return "\n".join(["# rtdeploy bench", "", fmt.to_markdown(summary_rows(r)), fmt.to_markdown(latency_rows(r)),
                      f"Environment: {environment_line(r)}.", "", *[f"Note: {n}" for n in r.notes]]) + "\n"
