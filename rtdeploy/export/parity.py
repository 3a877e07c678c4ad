"""Does the ONNX graph compute what the PyTorch model computes? Run both and compare logits.

Kept apart from the exporter so any graph (bytes, a path, a tampered copy) can be checked
against any reference: the check must be able to fail, and the tests make it fail.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import ConfigError

OnnxSource = bytes | str | os.PathLike | onnx.ModelProto


@dataclass
class Tolerance:
    """Pass when max|onnx - ref| <= atol + rtol * max|ref| and top-1 agreement >= min_top1."""

    atol: float = 1e-3
    rtol: float = 1e-4
    min_top1: float = 0.99

    def __post_init__(self):
        if not (self.atol >= 0 and self.rtol >= 0):
            raise ConfigError(f"--atol and --rtol must be >= 0, got {self.atol} and {self.rtol}")
        if not 0.0 <= self.min_top1 <= 1.0:
            raise ConfigError(f"--min-agreement must be between 0 and 1, got {self.min_top1}")


@dataclass
class ParityResult:
    max_abs_diff: float
    top1_agreement: float
    passed: bool
    images: int
    inputs: str            # "test split" (real images) or "random"
    allowed_abs_diff: float | None  # None: the difference is reported, not judged (INT8 vs FP32)
    min_top1_agreement: float
    error: str | None = None        # ONNX Runtime could not run the graph on these inputs


def make_session(model: OnnxSource, threads: int = 0):
    """A CPU ONNX Runtime session with full graph optimisation, as deployed; no thread spinning
    so it never competes with PyTorch running beside it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = os.fspath(model)
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def run_session(session, images: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Logits for all `images` [N,3,H,W]; a static-batch graph is fed full batches (zero-padded)."""
    images = images.numpy() if isinstance(images, torch.Tensor) else images
    images = np.ascontiguousarray(images, dtype=np.float32)
    inp = session.get_inputs()[0]
    static = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = static or batch_size
    outs = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        n = len(chunk)
        if static and n < static:
            chunk = np.concatenate([chunk, np.zeros((static - n, *chunk.shape[1:]), np.float32)])
        outs.append(session.run(None, {inp.name: chunk})[0][:n])
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


@torch.no_grad()
def torch_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    model.eval()
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).numpy()


def compare_logits(test: np.ndarray, ref: np.ndarray, tol: Tolerance, inputs: str, *,
                   judge_diff: bool = True) -> ParityResult:
    """Max abs difference and top-1 agreement of `test` against `ref` logits [N, classes]."""
    allowed = tol.atol + tol.rtol * float(np.abs(ref).max()) if judge_diff and ref.size else None
    if test.shape != ref.shape or not np.isfinite(test).all():
        return ParityResult(float("inf"), 0.0, False, len(ref), inputs, allowed, tol.min_top1)
    diff = float(np.abs(test.astype(np.float64) - ref).max()) if ref.size else 0.0
    agree = float((test.argmax(1) == ref.argmax(1)).mean()) if len(ref) else 1.0
    passed = agree >= tol.min_top1 and (allowed is None or diff <= allowed)
    return ParityResult(diff, agree, passed, len(ref), inputs, allowed, tol.min_top1)


def check_parity(onnx_model: OnnxSource, reference: nn.Module, images: torch.Tensor,
                 tol: Tolerance | None = None, inputs: str = "random") -> ParityResult:
    """Run `onnx_model` under ONNX Runtime and `reference` in PyTorch on the same normalised
    `images`; compare logits. A dynamic-batch graph is also run on one image alone, so a batch
    size baked into the graph (a traced Reshape, say) fails here and not in production.
    The caller decides what a failed result means."""
    tol = tol or Tolerance()
    ref = torch_logits(reference, images)
    try:
        session = make_session(onnx_model)
        test = run_session(session, images)
        if not isinstance(session.get_inputs()[0].shape[0], int) and len(images) > 1:
            test, ref = np.concatenate([test, run_session(session, images[:1])]), np.concatenate([ref, ref[:1]])
    except Exception as e:  # noqa: BLE001 - ORT's errors (wrong shapes, bad graph) are a failed check
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        return ParityResult(float("inf"), 0.0, False, len(images), inputs, None, tol.min_top1, error=first)
    result = compare_logits(test, ref, tol, inputs)
    result.images = len(images)
    return result
