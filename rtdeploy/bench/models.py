"""What `rtdeploy bench` measures: model files resolved to validated ONNX graphs (checkpoints
exported on the fly), their params/MACs, and their accuracy through ONNX Runtime.

Everything that can be wrong with an input is found here, before any timing starts.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint, read_checkpoint
from ..data import check_classes
from ..errors import ConfigError, DataError, ModelFileError
from ..export import (ExportConfig, OnnxMeta, count_macs, count_params, export_checkpoint, image_input,
                     load_onnx, make_session, read_metadata, run_session)
from ..export.graph import not_a_file
from ..fields import IMG_SIZE_MAX, IMG_SIZE_MIN, MAX_BATCH
from ..names import show

log = logging.getLogger(__name__)
_FLAG = re.compile(r"--([a-z][a-z-]*)")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container: an rtdeploy checkpoint, not ONNX
ORT_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")  # what ONNX Runtime's CPU build implements
MAX_SIDE = 8192  # input height/width in pixels (a bigger one is a damaged or hostile file)


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


def check_operators(model, path: Path) -> None:
    """Refuse, at load, operators from domains ONNX Runtime does not implement (custom ops would
    otherwise fail only when the first measurement starts)."""
    custom = [(n.op_type, n.domain) for n in model.graph.node if n.domain not in ORT_DOMAINS]
    if custom:
        op, domain = custom[0]
        raise ModelFileError(f"model {path} uses operator {op!r} from the custom domain {domain!r} ({len(custom)} "
                             "such node(s)), which ONNX Runtime does not provide; export the model with standard "
                             "ONNX operators")


def check_runnable(model, path: Path) -> None:
    """ONNX Runtime must be able to build a CPU session (unsupported ops, bad types): found now."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads, opts.log_severity_level = 1, 4
    try:
        ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any ORT load failure means the file cannot be benched
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
        raise ModelFileError(f"model {path} cannot be loaded by ONNX Runtime ({first}); "
                             "re-export it with 'rtdeploy export'") from None


def _dims(spec, meta, path: Path) -> tuple[int, int]:
    """Input height and width (from the graph, else the metadata), each checked for range."""
    size = meta.img_size if meta else None
    h, w = spec.height or size, spec.width or size
    if h is None or w is None:
        raise ModelFileError(f"model {path}: input height/width are symbolic and it carries no rtdeploy "
                             "metadata; export it with a fixed input size ('rtdeploy export')")
    if spec.batch is not None and spec.batch < 1:
        raise ModelFileError(f"model {path}: its input has a static batch of {spec.batch}; re-export it "
                             "('rtdeploy export', dynamic batch by default)")
    for what, v in (("height", h), ("width", w)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIDE:
            raise ModelFileError(f"model {path}: input {what} {v!r} is outside 1..{MAX_SIDE} pixels "
                                 "(graph or rtdeploy.img_size metadata); re-export it with 'rtdeploy export'")
    # a static input of 30000x30000 would make bench allocate gigabytes per batch: refuse first,
    # with the same 8..2048 bounds as --img-size and a checkpoint's img_size
    if not (IMG_SIZE_MIN <= h <= IMG_SIZE_MAX and IMG_SIZE_MIN <= w <= IMG_SIZE_MAX):
        raise ModelFileError(f"model {show(path)}: input is {h}x{w} pixels, outside what rtdeploy runs "
                             f"({IMG_SIZE_MIN}..{IMG_SIZE_MAX} per side); export it with a smaller input size")
    if spec.batch is not None and not 1 <= spec.batch <= MAX_BATCH:
        raise ModelFileError(f"model {show(path)}: its fixed batch of {spec.batch} is outside 1..{MAX_BATCH}; "
                             "export it with a dynamic or smaller batch ('rtdeploy export')")
    if size is not None and (size != h or size != w):
        # --data decodes images at the metadata's size: it must be the size the graph runs at
        raise ModelFileError(f"model {path}: its rtdeploy.img_size metadata ({size!r}) does not match its input "
                             f"({h}x{w}); re-export it with 'rtdeploy export'")
    return h, w


def describe(name: str, path: Path, onnx_path: Path, source: str) -> BenchModel:
    """Validate `onnx_path` as an image classifier and count its params and MACs."""
    model = load_onnx(onnx_path)
    spec = image_input(model, f"model {path}")
    check_operators(model, path)
    meta = read_metadata(model)
    h, w = _dims(spec, meta, path)
    check_runnable(model, path)
    return BenchModel(name, path, onnx_path, source, meta, spec.name, (3, h, w), spec.batch,
                      count_params(model), count_macs(model, h))


def resolve_models(paths: list[Path], tmp: Path, on_stage=None) -> list[BenchModel]:
    """Validate every file first (cheap), then export the checkpoints into `tmp`."""
    from ..models.complexity import count_macs_params

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


def _test_split(m: BenchModel, data: str, data_root, load, cache: dict):
    """The data split as the model was trained on it: its size, normalisation and training seed (from metadata).

    The values come from the model file, not from bench's flags: a value the data loader refuses
    is reported as the model's metadata field, never as a flag (--img-size, --mean) bench lacks."""
    meta = m.meta
    split = meta.split or {"seed": meta.seed}
    try:
        key = (meta.img_size, tuple(sorted(split.items())), tuple(meta.mean), tuple(meta.std))
        if key not in cache:
            cache[key] = load(data, data_root=data_root, img_size=meta.img_size, mean=meta.mean, std=meta.std,
                              **split)
    except (ConfigError, TypeError, ValueError) as e:
        if isinstance(e, ConfigError) and not _FLAG.search(str(e)):
            raise
        text = _FLAG.sub(lambda f: "rtdeploy." + f.group(1).replace("-", "_"), str(e).splitlines()[0] if str(e) else "")
        raise ModelFileError(f"model {m.path}: its metadata cannot rebuild the test split for --data "
                             f"({text or type(e).__name__}); re-export it with 'rtdeploy export', or bench it without --data") from None
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
        splits = _test_split(m, data, data_root, load, cache)
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
