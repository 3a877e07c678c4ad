"""`rtdeploy export` as a library call: checkpoint -> ONNX -> simplify -> checks [-> INT8] -> file.

Every step is verified (onnx.checker, parity against PyTorch, INT8 agreement with FP32) and the
verdicts go into the report. Files are written only after all checks pass, each atomically, so a
failed export leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import ModelMeta, load_checkpoint
from ..data import check_classes, load_splits
from ..env import versions
from ..errors import ConfigError, PipelineError
from ..evaluation import split_settings, splits_for
from ..fsutil import atomic_path
from .graph import node_count
from .metadata import meta_from_checkpoint, write_metadata
from .onnx_export import (DEFAULT_EXPORTER, DEFAULT_OPSETS, check_exporter, check_graph, check_opset, check_simplifier,
                          exporter_record, record_exporter, simplify, to_onnx)
from .parity import ParityResult, Tolerance, check_parity, compare_logits, make_session, run_session
from .quantize import quantize_int8

log = logging.getLogger(__name__)
RANDOM_IMAGES = 16


@dataclass
class ExportConfig:
    opset: int | None = None       # None: the exporter's default (dynamo 18, torchscript 17)
    exporter: str = DEFAULT_EXPORTER  # "dynamo" (torch.export + onnxscript) or "torchscript"
    dynamic_batch: bool = True
    batch_size: int = 1            # the fixed batch of a --static-batch graph
    simplifier: str = "onnxsim"
    tolerance: Tolerance = field(default_factory=Tolerance)
    parity_images: int = 256       # test images compared with PyTorch; 0 = the whole split
    int8: bool = False
    calib_data: str | None = None
    calib_images: int = 256
    int8_min_agreement: float = 0.9  # INT8 vs FP32 top-1 agreement below this fails the export
    int8_reduce_range: bool = False  # 7-bit weights, for AVX2 CPUs without VNNI (see quantize.py)

    def __post_init__(self):
        check_exporter(self.exporter)
        if self.opset is None:
            self.opset = DEFAULT_OPSETS[self.exporter]
        check_opset(self.opset, self.exporter)
        check_simplifier(self.simplifier)
        for flag, value, low in (("--batch-size", self.batch_size, 1), ("--parity-images", self.parity_images, 0),
                                 ("--calib-images", self.calib_images, 1)):
            if value < low:
                raise ConfigError(f"{flag} must be >= {low}, got {value}")
        if self.int8 and not self.calib_data:
            raise ConfigError("--int8 needs --calib-data (images to calibrate activation ranges on), "
                              "e.g. --calib-data sample or the training folder")
        if self.calib_data and not self.int8:
            raise ConfigError("--calib-data is only used with --int8; add --int8 or drop it")
        if not 0.0 <= self.int8_min_agreement <= 1.0:
            raise ConfigError(f"--int8-min-agreement must be between 0 and 1, got {self.int8_min_agreement}")


@dataclass
class Int8Report:
    path: str
    size_bytes: int
    nodes: int
    calib_data: str
    calib_images: int
    accuracy: float | None           # on the test split, through ONNX Runtime
    fp32_accuracy: float | None      # the FP32 graph on the same images
    accuracy_images: int
    parity: ParityResult             # INT8 vs FP32 logits (ONNX Runtime both)
    format: str = "QDQ"
    per_channel: bool = True
    activations: str = "uint8"
    weights: str = "int8"
    reduce_range: bool = False


@dataclass
class ExportReport:
    path: str
    checkpoint: str
    arch: str
    opset: int
    exporter: str                    # rtdeploy.exporter in the file: which exporter, which torch
    dynamic_batch: bool
    batch_size: int | None           # None when dynamic
    simplifier: str
    simplified: bool
    nodes: dict                      # {"before": int, "after": int}
    size_bytes: int
    checker_passed: bool
    parity: ParityResult
    accuracy: float | None           # FP32 ONNX accuracy on the checkpoint's test split (--data)
    accuracy_images: int
    metadata: dict
    int8: Int8Report | None
    seconds: float
    versions: dict = field(default_factory=versions)


def int8_path(out: str | Path) -> Path:
    """Where the INT8 copy goes: model.onnx -> model.int8.onnx."""
    out = Path(out)
    return out.with_name(f"{out.stem}.int8{out.suffix or '.onnx'}")


@dataclass
class _Images:
    """Inputs for the checks: normalised images (+ labels when real) and where they came from."""

    x: torch.Tensor
    y: torch.Tensor | None
    source: str


def _subset(x: torch.Tensor, y: torch.Tensor | None, n: int, seed: int = 0):
    if n <= 0 or n >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], (y[idx] if y is not None else None)


def _eval_images(meta: ModelMeta, data, calib, calib_data, data_root, load) -> _Images | None:
    """The checkpoint's own test split: from --data, else from --calib-data when it is the same dataset."""
    if calib is not None and data is not None and data == calib_data:
        check_classes(calib.classes, meta.classes)  # same data, seed, size, normalisation: decode once
        return _Images(calib.test.normalised(), calib.test.labels, "test split")
    if data is not None:
        test = splits_for(meta, data, data_root=data_root, load=load).test
        return _Images(test.normalised(), test.labels, "test split")
    if calib is not None and list(calib.classes) == list(meta.classes):
        return _Images(calib.test.normalised(), calib.test.labels, "test split")
    return None


def _calibration(meta: ModelMeta, calib_data: str, data_root, load):
    """--calib-data decoded at the model's size and normalisation, split with its training seed
    (so for the training dataset, calibration uses train images, never the test split)."""
    return load(calib_data, data_root=data_root, img_size=meta.img_size, mean=meta.mean, std=meta.std,
                **split_settings(meta))


def _accuracy(logits: np.ndarray, labels: torch.Tensor | None) -> float | None:
    if labels is None or not len(labels):
        return None
    return float((torch.from_numpy(logits.argmax(1)) == labels).float().mean())


def _random_images(img_size: int, n: int) -> _Images:
    x = torch.randn(n, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    return _Images(x, None, "random")


def export_checkpoint(ckpt: str | Path, out: str | Path, cfg: ExportConfig | None = None, *,
                      data: str | None = None, data_root: str | None = None, load=load_splits,
                      on_stage: Callable[[str], None] | None = None) -> ExportReport:
    """Export `ckpt` to `out` (and its INT8 copy to int8_path(out) with cfg.int8)."""
    cfg = cfg or ExportConfig()
    stage = on_stage or (lambda name: log.info("export: %s", name))
    t0 = time.perf_counter()
    model, meta = load_checkpoint(ckpt)
    calib = _calibration(meta, cfg.calib_data, data_root, load) if cfg.int8 else None
    real = _eval_images(meta, data, calib, cfg.calib_data, data_root, load)
    parity_in = _Images(*_subset(real.x, real.y, cfg.parity_images), real.source) if real else \
        _random_images(meta.img_size, max(RANDOM_IMAGES, cfg.batch_size))

    stage(f"exporting to ONNX ({cfg.exporter} exporter, opset {cfg.opset})")
    graph = to_onnx(model, meta.img_size, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch, batch_size=cfg.batch_size,
                    exporter=cfg.exporter)
    before = node_count(graph)
    stage(f"simplifying ({cfg.simplifier})")
    graph, simplified = simplify(graph, cfg.simplifier)
    onnx_meta = meta_from_checkpoint(meta, split=split_settings(meta), data=_trained_on(meta))
    write_metadata(graph, onnx_meta)
    record_exporter(graph, cfg.exporter)
    check_graph(graph)
    blob = graph.SerializeToString()

    stage(f"parity check on {len(parity_in.x)} {parity_in.source} images")
    parity = check_parity(blob, model, parity_in.x, cfg.tolerance, parity_in.source)
    if not parity.passed:
        raise PipelineError(_parity_message(parity, "ONNX Runtime and PyTorch", _FP32_HINT))
    fp32_logits = None
    if real is not None:
        stage(f"FP32 accuracy on {len(real.x)} test images")
        fp32_logits = run_session(make_session(blob), real.x)
    int8 = int8_blob = None
    if cfg.int8:
        int8, int8_blob = _int8(graph, onnx_meta, cfg, calib, real, fp32_logits, out, stage)
    _write(out, blob, int8_blob)
    return ExportReport(
        path=str(out), checkpoint=str(ckpt), arch=meta.arch, opset=cfg.opset,
        exporter=exporter_record(cfg.exporter), dynamic_batch=cfg.dynamic_batch,
        batch_size=None if cfg.dynamic_batch else cfg.batch_size, simplifier=cfg.simplifier,
        simplified=simplified, nodes={"before": before, "after": node_count(graph)}, size_bytes=len(blob),
        checker_passed=True, parity=parity, accuracy=_accuracy(fp32_logits, real.y) if real else None,
        accuracy_images=len(real.x) if real else 0, metadata=asdict(onnx_meta), int8=int8,
        seconds=time.perf_counter() - t0)


def _write(out: str | Path, blob: bytes, int8_blob: bytes | None) -> None:
    """Both files atomically; an error while writing either leaves neither temp file behind."""
    with atomic_path(out) as tmp, (atomic_path(int8_path(out)) if int8_blob else contextlib.nullcontext()) as tmp8:
        tmp.write_bytes(blob)
        if int8_blob:
            tmp8.write_bytes(int8_blob)


def _trained_on(meta: ModelMeta) -> str:
    return next((str(h["data"]) for h in meta.history if h.get("stage") == "train" and "data" in h), "")


_FP32_HINT = ("loosen --atol/--rtol/--min-agreement only if the difference is expected, "
              "or try another --opset or --simplifier")
_INT8_HINT = "calibrate on more images (--calib-images), try --int8-reduce-range, or lower --int8-min-agreement"


def _parity_message(p: ParityResult, what: str, hint: str) -> str:
    if p.error:
        return f"{what} disagree: ONNX Runtime could not run the graph ({p.error}); nothing was written; {hint}"
    allowed = f" (allowed {p.allowed_abs_diff:.3g})" if p.allowed_abs_diff is not None else ""
    return (f"{what} disagree on {p.images} {p.inputs} images: max |diff| {p.max_abs_diff:.3g}{allowed}, "
            f"top-1 agreement {100 * p.top1_agreement:.1f}% (required {100 * p.min_top1_agreement:.1f}%); "
            f"nothing was written; {hint}")


def _int8(graph, onnx_meta, cfg: ExportConfig, calib, real: _Images | None, fp32_logits, out, stage):
    """Quantise, then measure the INT8 graph against the FP32 one (and labels, when known)."""
    batch = 16 if cfg.dynamic_batch else cfg.batch_size
    calib_x, _ = _subset(calib.train.normalised(), None, cfg.calib_images)
    stage(f"INT8 calibration on {len(calib_x)} images")
    q = quantize_int8(graph, calib_x.numpy(), batch_size=batch, reduce_range=cfg.int8_reduce_range)
    write_metadata(q, replace(onnx_meta, precision="int8"))
    record_exporter(q, cfg.exporter)
    check_graph(q, "INT8 graph")
    blob = q.SerializeToString()
    images = real or _Images(*_subset(calib.test.normalised(), None, cfg.parity_images), "calibration test split")
    if fp32_logits is None:
        fp32_logits = run_session(make_session(graph), images.x)
    stage(f"INT8 accuracy on {len(images.x)} images")
    int8_logits = run_session(make_session(blob), images.x)
    parity = compare_logits(int8_logits, fp32_logits, Tolerance(min_top1=cfg.int8_min_agreement),
                            images.source, judge_diff=False)
    if not parity.passed:
        raise PipelineError(_parity_message(parity, "the INT8 and FP32 graphs", _INT8_HINT))
    return Int8Report(path=str(int8_path(out)), size_bytes=len(blob), nodes=node_count(q), calib_data=calib.source,
                      calib_images=len(calib_x), accuracy=_accuracy(int8_logits, images.y),
                      fp32_accuracy=_accuracy(fp32_logits, images.y), accuracy_images=len(images.x),
                      parity=parity, reduce_range=cfg.int8_reduce_range), blob
