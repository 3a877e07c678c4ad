"""`--round-to auto`: the channel multiple that suits the deployment target's kernels.

Why widths should be multiples of something: ONNX Runtime's CPU convolutions (MLAS) run as
GEMMs whose output channels are processed in blocks of one SIMD register of float32 lanes; a
width that is not a multiple leaves a partly filled block that costs as much as a full one (or
falls to a slower edge path). On AVX2 (256-bit registers: 8 float32 lanes) widths rounded to 8
ran 2x faster at equal MACs than unrounded ones (benchmarks/results/deploy.md); on AVX-512 (16
lanes) the same models reached only ~0.8 of their MAC ratio at round-to 8 and 1 (issue 13).
GPU tensor cores (CUDA, TensorRT) need channel counts that are multiples of 8 for FP16 (NVIDIA's
"Deep Learning Performance" guide; 16 for INT8), so 8 there.

The CPU is described by its /proc/cpuinfo flags (Linux); `describe_cpu` takes another path, so
tests run on stubbed descriptions.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass

CPUINFO = "/proc/cpuinfo"
GPU_PROVIDERS = ("cuda", "tensorrt")
# (flag, multiple, why): the widest SIMD the CPU offers decides; first match wins.
_CPU_RULES = (
    ("avx512f", 16, "AVX-512: 512-bit registers hold 16 float32 lanes, which MLAS GEMM kernels fill per block"),
    ("avx2", 8, "AVX2: 256-bit registers hold 8 float32 lanes, which MLAS GEMM kernels fill per block"),
    ("avx", 8, "AVX: 256-bit registers hold 8 float32 lanes"),
    ("asimd", 4, "ARM NEON (ASIMD): 128-bit registers hold 4 float32 lanes"),
    ("sse2", 4, "SSE2: 128-bit registers hold 4 float32 lanes"),
)
FALLBACK = 8


@dataclass
class CpuDescription:
    model: str
    flags: frozenset[str]
    machine: str


@dataclass
class RoundToChoice:
    round_to: int
    reason: str
    target: str                      # "cpu" or a GPU provider


def describe_cpu(path: str | None = None) -> CpuDescription:
    """Model name and feature flags (x86 'flags', ARM 'Features') from a cpuinfo file (default CPUINFO)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(path or CPUINFO) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "CPU part") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return CpuDescription(model, frozenset(flags), platform.machine())


def choose_round_to(provider: str = "cpu", cpu: CpuDescription | None = None) -> RoundToChoice:
    """The channel multiple for `provider` ("cpu", "cuda", "tensorrt") and why."""
    if provider in GPU_PROVIDERS:
        return RoundToChoice(8, f"{provider}: GPU tensor cores run FP16 convolutions on channel multiples of 8", provider)
    cpu = cpu or describe_cpu()
    for flag, multiple, why in _CPU_RULES:
        if flag in cpu.flags:
            return RoundToChoice(multiple, f"{cpu.model}: {why}", "cpu")
    return RoundToChoice(FALLBACK, f"{cpu.model}: no known SIMD flags found in {CPUINFO}; "
                                   f"{FALLBACK} (256-bit SIMD, the most common) assumed", "cpu")
