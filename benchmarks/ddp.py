"""Data-parallel training under torchrun: throughput of 1 vs N processes, and peak memory per
process with and without the shared decoded-image cache (issue 14).

Two measurements, each through the real CLI (`rtdeploy train`, under `python -m
torch.distributed.run` for N > 1):

1. Throughput: the paper's SE-ResNet18 at 64 px on UC Merced, the same global batch (64) and
   seed, one process (with all the cores as torch threads) vs N processes (cores split between
   them; torchrun gives each OMP_NUM_THREADS=cores/N). Train images/s of the last epoch, from the
   run summary; runs are interleaved and repeated, ratios are taken within a repeat.
2. Memory: UC Merced at its native 256 px (2,100 images, 413 MB decoded) trained for one short
   epoch by N processes with --data-cache disk (the shared cache file), memory (each process
   decodes the whole set into its own RAM, the pre-issue-14 way) and off (decoded on demand).
   Every process reports its own peak RSS (VmHWM, rtdeploy.env.peak_rss_mb). The run is kept short (a small model, 10 % of
   the images in the train split, 5 % in validation) but every image is decoded.

    python -m benchmarks.ddp --data ../shared/data/ucmerced
    python -m benchmarks.ddp --data ../shared/data/ucmerced --device cuda   # on a GPU machine
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import common


def _parser():
    p = common.parser(__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda (N processes need N GPUs with cuda)")
    p.add_argument("--nproc", default=None, help="process counts to compare, e.g. 1,2 [default: 1,2 on CPU; "
                                                 "1 and the GPU count on cuda]")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the throughput runs")
    p.add_argument("--max-per-class", type=int, default=20, help="images per class for the throughput runs")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the throughput runs (the last is reported)")
    p.add_argument("--memory-arch", default="tv/mobilenet_v3_small", help="model of the memory runs")
    p.add_argument("--memory-size", type=int, default=256, help="image size of the memory runs")
    p.add_argument("--modes", default="disk,memory,off", help="--data-cache modes of the memory runs")
    p.set_defaults(seeds="0")
    return p


def _counts(args) -> list[int]:
    if args.nproc:
        return [int(n) for n in args.nproc.split(",")]
    if args.device == "cuda":
        return sorted({1, max(1, torch.cuda.device_count())})
    return [1, 2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(n: int, train_args: list[str]) -> list[str]:
    if n == 1:
        return [sys.executable, "-m", "rtdeploy", "train", *train_args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", str(_port()),
            "-m", "rtdeploy", "train", *train_args]


def _run(n: int, train_args: list[str], out: Path, cache: Path, threads: int) -> dict:
    """One `rtdeploy train` run; its summary JSON plus the wall time (start-up included)."""
    env = {**os.environ, "RTDEPLOY_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(threads)}
    cmd = _command(n, [*train_args, "--out", str(out), "--force"])
    common.log(" ".join(cmd[1:]))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    summary = json.loads(out.with_suffix(".json").read_text())
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def _subset(src: Path, dst: Path, per_class: int) -> Path:
    """A class folder holding copies of the first `per_class` images of each class of `src`
    (copies, not links: a link leaving its class folder is skipped by the data scan)."""
    for cls in sorted(d for d in src.iterdir() if d.is_dir()):
        (dst / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(p for p in cls.iterdir() if p.is_file())[:per_class]:
            copy = dst / cls.name / f.name
            if not copy.exists():
                shutil.copyfile(f, copy)
    return dst


def throughput(args, work: Path, cores: int) -> list[dict]:
    rows = []
    data = _subset(Path(args.data), work / f"subset{args.max_per_class}", args.max_per_class)
    train = ["--data", str(data), "--arch", "resnet18_se", "--img-size", "64", "--epochs", str(args.epochs),
             "--batch-size", "64", "--lr", "0.1", "--schedule", "onecycle", "--augment", "--seed", "0",
             "--device", args.device]
    # One process with all cores as threads, one with a single thread (what each of N ranks
    # gets), then N processes: separates the effect of processes from that of threads.
    configs = [(n, max(1, cores // n) if args.device == "cpu" else 1) for n in _counts(args)]
    if args.device == "cpu" and cores > 1:
        configs.insert(1, (1, 1))
    for repeat in range(args.repeats):
        for n, threads in configs:
            s = _run(n, train, work / f"tp_n{n}_t{threads}.pt", work / "cache", threads)
            last = s["epochs"][-1]
            rows.append({"repeat": repeat, "processes": n, "threads_per_process": threads,
                         "backend": s["distributed"]["backend"], "train_images_per_s": last["images_per_s"],
                         "epoch_s": last["seconds"], "wall_s": s["wall_s"],
                         "final_accuracy": s["final_accuracy"], "digest": s["distributed"].get("rank_digests")})
    return rows


def memory(args, work: Path, cores: int) -> list[dict]:
    rows = []
    n = max(_counts(args))
    train = ["--data", args.data, "--arch", args.memory_arch, "--img-size", str(args.memory_size), "--epochs", "1",
             "--batch-size", "32", "--test-frac", "0.85", "--val-frac", "0.05", "--seed", "0", "--device", args.device]
    for mode in args.modes.split(","):
        cache = work / f"cache_{mode}"
        s = _run(n, [*train, "--data-cache", mode], work / f"mem_{mode}.pt", cache, max(1, cores // n))
        cached = sum(f.stat().st_size for f in cache.glob("*.u8")) if cache.exists() else 0
        rows.append({"data_cache": mode, "processes": n, "peak_rss_mb_per_process": s["distributed"]["rank_peak_rss_mb"],
                     "cache_file_mb": round(cached / 2**20, 1), "wall_s": s["wall_s"],
                     "images": sum(s["split"].values())})
    return rows


def _markdown(tp: list[dict], mem: list[dict], args, cores: int) -> str:
    lines = ["# Data-parallel training (torchrun) on this machine", "",
             f"Device {args.device}; {cores} CPU cores. Throughput: resnet18_se, 64 px, global batch 64, "
             f"UC Merced capped at {args.max_per_class} images per class, train images/s of epoch {args.epochs} "
             "(start-up and evaluation excluded), repeats interleaved.", "",
             "| repeat | processes | threads each | backend | train img/s | epoch s | wall s (with start-up) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['repeat']} | {r['processes']} | {r['threads_per_process']} | {r['backend'] or '-'} | "
              f"{r['train_images_per_s']:.1f} | {r['epoch_s']:.1f} | {r['wall_s']:.0f} |" for r in tp]
    ratios = _ratios(tp)
    if ratios:
        lines += ["", "Speed-up of the most processes over one process using all cores (same repeat): " +
                  ", ".join(f"{x:.2f}x" for x in ratios) + "."]
    lines += ["", f"Memory: {args.memory_arch} at {args.memory_size} px, one epoch on a 10 % train split "
                  "(5 % validation); every image is decoded. Peak RSS of each process (its own VmHWM); it includes "
                  "~0.5 GB of torch's shared libraries mapped into every process.", "",
              "| --data-cache | processes | images | peak RSS per process (MB) | cache file (MB) | wall s |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['data_cache']} | {r['processes']} | {r['images']} | "
              f"{', '.join(f'{v:.0f}' for v in r['peak_rss_mb_per_process'])} | {r['cache_file_mb'] or '-'} | "
              f"{r['wall_s']:.0f} |" for r in mem]
    return "\n".join(lines) + "\n"


def _ratios(tp: list[dict]) -> list[float]:
    out = []
    for repeat in sorted({r["repeat"] for r in tp}):
        rows = [r for r in tp if r["repeat"] == repeat]
        one = max((r for r in rows if r["processes"] == 1), key=lambda r: r["threads_per_process"], default=None)
        most = max(rows, key=lambda r: r["processes"])
        if one is not None and most["processes"] > 1:
            out.append(most["train_images_per_s"] / one["train_images_per_s"])
    return out


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    if args.quick:
        args.repeats, args.max_per_class, args.epochs, args.memory_size = 1, 6, 1, 64
    cores = os.cpu_count() or 1
    work = common.runs_dir(args) / "ddp"
    work.mkdir(parents=True, exist_ok=True)
    tp = throughput(args, work, cores)
    mem = memory(args, work, cores)
    settings = {"device": args.device, "processes": _counts(args), "repeats": args.repeats,
                "max_per_class": args.max_per_class, "epochs": args.epochs, "memory_arch": args.memory_arch,
                "memory_size": args.memory_size, "cuda_devices": torch.cuda.device_count() if args.device == "cuda" else 0,
                "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else None}
    payload = {"provenance": common.provenance(args, settings), "throughput": tp,
               "speedup": _ratios(tp), "memory": mem}
    name = "ddp" if args.device == "cpu" else f"ddp_{args.device}"
    common.write_results(args, name, payload, _markdown(tp, mem, args, cores))


if __name__ == "__main__":
    main()
