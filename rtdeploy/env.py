"""Versions and machine facts recorded in every report, so results can be compared and re-run."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from . import __version__

PACKAGES = ("torch", "torchvision", "torch-pruning", "onnx", "onnxruntime", "onnxruntime-gpu",
            "onnxsim", "onnxslim", "numpy")


def versions() -> dict[str, str]:
    out = {"rtdeploy": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted=("avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "f16c", "amx_tile")) -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def machine() -> dict:
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
            "platform": platform.platform(), "argv": " ".join(sys.argv)}


def peak_rss_mb() -> float:
    """This process's own peak resident memory, in MB.

    Linux's VmHWM: the high-water mark of the address space this program got at exec. Not
    getrusage's ru_maxrss, which also takes the peak of the process that started this one (the
    kernel folds the pre-exec address space into it): a command started by a 2 GB pytest worker
    or torchrun reports at least 2 GB. ru_maxrss only where /proc is missing (macOS: bytes)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
