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
