"""What `rtdeploy bench` measures: model files resolved to validated ONNX graphs (checkpoints
exported on the fly), their params/MACs, and their accuracy through ONNX Runtime.

Everything that can be wrong with an input is found here, before any timing starts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, read_checkpoint
from .data import check_classes
from .errors import DataError, ModelFileError
from .export import (ExportConfig, OnnxMeta, count_macs, count_params, export_checkpoint, image_input,
                     load_onnx, make_session, read_metadata, run_session)
from .export.graph import not_a_file
from .fields import IMG_SIZE_MAX, IMG_SIZE_MIN, MAX_BATCH
from .names import show

log = logging.getLogger(__name__)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container: an rtdeploy checkpoint, not ONNX


@dataclass
class BenchModel:
    """A model ready to time: the ONNX file to run and what is known about it."""

    name: str
    path: Path                     # what the user passed
    onnx_path: Path                # what is timed (a temp export for checkpoints)
    source: str                    # "onnx" or "checkpoint"
    meta: OnnxMeta | None
    input_name: str
    shape: tuple[int, int, int]    # C, H, W
    static_batch: int | None
    params: int
    macs: int
    torch_macs: int | None = None
    torch_params: int | None = None

    @property
    def size_bytes(self) -> int:
        return self.onnx_path.stat().st_size


def is_checkpoint(path: Path) -> bool:
    """True for an rtdeploy checkpoint, False for anything else (then it must be ONNX)."""
    if not path.is_file():
        raise ModelFileError(f"model {show(path)} {not_a_file(path)}; pass .onnx files or rtdeploy checkpoints")
    with open(path, "rb") as f:
        return f.read(4) == _ZIP_MAGIC


def display_names(paths: list[Path]) -> list[str]:
    """File stems, unless two models share one (then file names, then full paths)."""
    for names in ([p.stem for p in paths], [p.name for p in paths]):
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def describe(name: str, path: Path, onnx_path: Path, source: str) -> BenchModel:
    """Validate `onnx_path` as an image classifier and count its params and MACs."""
    model = load_onnx(onnx_path)
    spec = image_input(model, f"model {path}")
    meta = read_metadata(model)
    size = meta.img_size if meta else None
    h, w = spec.height or size, spec.width or size
    if h is None or w is None:
        raise ModelFileError(f"model {path}: input height/width are symbolic and it carries no rtdeploy "
                             "metadata; export it with a fixed input size ('rtdeploy export')")
    # a static input of 30000x30000 would make bench allocate gigabytes per batch: refuse first
    if not (IMG_SIZE_MIN <= h <= IMG_SIZE_MAX and IMG_SIZE_MIN <= w <= IMG_SIZE_MAX):
        raise ModelFileError(f"model {show(path)}: input is {h}x{w} pixels, outside what rtdeploy runs "
                             f"({IMG_SIZE_MIN}..{IMG_SIZE_MAX} per side); export it with a smaller input size")
    if spec.batch is not None and not 1 <= spec.batch <= MAX_BATCH:
        raise ModelFileError(f"model {show(path)}: its fixed batch of {spec.batch} is outside 1..{MAX_BATCH}; "
                             "export it with a dynamic or smaller batch ('rtdeploy export')")
    return BenchModel(name, path, onnx_path, source, meta, spec.name, (3, h, w), spec.batch,
                      count_params(model), count_macs(model, h))


def resolve_models(paths: list[Path], tmp: Path, on_stage=None) -> list[BenchModel]:
    """Validate every file first (cheap), then export the checkpoints into `tmp`."""
    from .models.complexity import count_macs_params

    kinds = [is_checkpoint(p) for p in paths]
    names = display_names(paths)
    onnx_models = {i: describe(names[i], p, p, "onnx") for i, p in enumerate(paths) if not kinds[i]}
    for p in (p for p, k in zip(paths, kinds) if k):
        read_checkpoint(p)  # a damaged checkpoint fails now, not after other exports
    out = []
    for i, p in enumerate(paths):
        if not kinds[i]:
            out.append(onnx_models[i])
            continue
        if on_stage:
            on_stage(f"exporting {p.name} to ONNX")
        onnx_path = tmp / f"{i}-{p.stem}.onnx"
        export_checkpoint(p, onnx_path, ExportConfig())
        m = describe(names[i], p, onnx_path, "checkpoint")
        torch_model, meta = load_checkpoint(p)
        m.torch_macs, m.torch_params = count_macs_params(torch_model, meta.img_size)
        out.append(m)
    return out


def _test_split(meta: OnnxMeta, data: str, data_root, load, cache: dict):
    """The data split as the model was trained on it: its size, normalisation and training seed (from metadata)."""
    split = meta.split or {"seed": meta.seed}
    key = (meta.img_size, tuple(sorted(split.items())), tuple(meta.mean), tuple(meta.std))
    if key not in cache:
        cache[key] = load(data, data_root=data_root, img_size=meta.img_size, mean=meta.mean, std=meta.std,
                          **split)
    return cache[key]


def accuracies(models: list[BenchModel], data: str, data_root, load, with_torch: bool,
               notes: list[str]) -> dict[tuple[str, str], tuple[float, int]]:
    """{(name, "onnx"|"torch"): (accuracy, images)} on each model's own test split of `data`."""
    cache: dict = {}
    out = {}
    for m in models:
        if m.meta is None:
            notes.append(f"{m.name}: no rtdeploy metadata (classes, normalisation), so no accuracy; "
                         "export it with 'rtdeploy export'")
            continue
        splits = _test_split(m.meta, data, data_root, load, cache)
        try:
            check_classes(splits.classes, m.meta.classes)
        except DataError as e:
            raise DataError(f"model {m.path}: {e}") from e
        test = splits.test
        logits = run_session(make_session(m.onnx_path), test.normalised())
        out[(m.name, "onnx")] = (_acc(torch.from_numpy(logits), test.labels), len(test))
        if with_torch and m.source == "checkpoint":
            model, _ = load_checkpoint(m.path)
            with torch.no_grad():
                logits_t = torch.cat([model(x) for x in test.normalised().split(128)])
            out[(m.name, "torch")] = (_acc(logits_t, test.labels), len(test))
    return out


def _acc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0
