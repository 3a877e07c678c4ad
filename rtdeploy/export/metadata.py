"""What an exported .onnx file carries so it can be run (and evaluated) without its checkpoint.

Stored as ONNX `metadata_props` (string key/value pairs, visible in Netron and in
`onnxruntime.InferenceSession.get_modelmeta().custom_metadata_map`). Lists and dicts are JSON.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import onnx

from .. import __version__
from ..checkpoint import ModelMeta
from ..errors import ModelFileError

PREFIX = "rtdeploy."
_JSON_FIELDS = ("classes", "mean", "std", "pruning", "split")
_INT_FIELDS = ("img_size", "seed")


@dataclass
class OnnxMeta:
    """The model's contract: what to feed it (size, normalisation) and what comes out (classes)."""

    arch: str
    classes: list[str]
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pruning: dict | None = None  # {"criterion": ..., "ratio": ...} when the model was compressed
    seed: int = 0                # the training split's seed: bench --data rebuilds the same test split
    split: dict | None = None    # seed, test_frac, val_frac, max_per_class of that split
    data: str = ""               # the training data source, for the record
    precision: str = "fp32"      # fp32 | int8
    rtdeploy_version: str = __version__
    extra: dict = field(default_factory=dict)  # any other rtdeploy.* keys, kept verbatim


def _pruning_summary(meta: ModelMeta) -> dict | None:
    """The scalar facts of the last compress stage (criterion, ratio, ...); no nested records."""
    if meta.pruning is None:
        return None
    return {k: v for k, v in meta.pruning.items()
            if k != "stage" and (v is None or isinstance(v, (str, int, float, bool)))}


def meta_from_checkpoint(meta: ModelMeta, *, split: dict, data: str = "", precision: str = "fp32") -> OnnxMeta:
    return OnnxMeta(arch=meta.arch, classes=list(meta.classes), img_size=int(meta.img_size),
                    mean=tuple(meta.mean), std=tuple(meta.std), pruning=_pruning_summary(meta),
                    seed=split["seed"], split=split, data=data, precision=precision)


def write_metadata(model: onnx.ModelProto, meta: OnnxMeta) -> onnx.ModelProto:
    """Set (replace) the rtdeploy.* metadata_props of `model` in place; returns it."""
    keep = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    values = asdict(meta)
    extra = values.pop("extra")
    for key, value in {**extra, **values}.items():
        text = json.dumps(value) if key in _JSON_FIELDS else str(value)
        model.metadata_props.add(key=PREFIX + key, value=text)
    model.producer_name, model.producer_version = "rtdeploy", __version__
    model.doc_string = f"{meta.arch} ({len(meta.classes)} classes, 3x{meta.img_size}x{meta.img_size}, {meta.precision})"
    return model


def read_metadata(source: str | os.PathLike | onnx.ModelProto) -> OnnxMeta | None:
    """The rtdeploy metadata of an .onnx file (or loaded model); None when it has none."""
    model = source if isinstance(source, onnx.ModelProto) else _load_header(source)
    props = {p.key[len(PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}
    if "classes" not in props:
        return None
    try:
        values = {k: json.loads(props.pop(k)) for k in _JSON_FIELDS if k in props}
        values.update({k: int(props.pop(k)) for k in _INT_FIELDS if k in props})
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        known = {k: props.pop(k) for k in ("arch", "data", "precision", "rtdeploy_version") if k in props}
        return OnnxMeta(**values, **known, extra=props)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"damaged rtdeploy metadata in the ONNX file ({e}); re-export it with 'rtdeploy export'") from e


def _load_header(path: str | os.PathLike) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, OSError
        raise ModelFileError(f"{path} is not a readable ONNX file ({type(e).__name__}); export one with 'rtdeploy export'") from e
