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
from ..fields import (IMG_SIZE_MAX, IMG_SIZE_MIN, MAX_SEED, FieldError, class_names, dict_of, integer_text,
                      parse_json, rgb_triple, split, text)
from ..names import show

PREFIX = "rtdeploy."
_JSON_FIELDS = ("classes", "mean", "std", "pruning", "split")
_PRECISIONS = ("fp32", "int8")


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


def read_metadata(source: str | os.PathLike | onnx.ModelProto, where: str | None = None) -> OnnxMeta | None:
    """The rtdeploy metadata of an .onnx file (or loaded model); None when it has none.

    Every rtdeploy.* value is checked for type and range (a file may have been edited), and so is
    the model's output against the recorded classes; a bad one is a ModelFileError naming the key
    and the file (`where`, else the path given). Unknown rtdeploy.* keys are kept in `extra`.
    """
    model = source if isinstance(source, onnx.ModelProto) else _load_header(source)
    where = where or (show(source) if not isinstance(source, onnx.ModelProto) else "the ONNX file")
    props = {p.key[len(PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}
    if "classes" not in props:
        return None
    try:
        meta = _parse(props)
        _check_io(model, meta)
    except FieldError as e:
        raise ModelFileError(f"{where} has damaged rtdeploy metadata: {e}; re-export it with 'rtdeploy export'") from e
    return meta


def _parse(props: dict[str, str]) -> OnnxMeta:
    json_values = {k: parse_json(props.pop(k), PREFIX + k) for k in _JSON_FIELDS if k in props}
    for key in ("mean", "std", "img_size"):
        if key not in props and key not in json_values:
            raise FieldError(PREFIX + key, "present", "nothing")
    pruning = json_values.get("pruning")
    if pruning is not None:
        for k, v in dict_of(pruning, PREFIX + "pruning").items():
            if v is not None and not isinstance(v, (str, int, float, bool)):
                raise FieldError(f"{PREFIX}pruning.{k}", "a plain value", v)
    split_ = json_values.get("split")
    precision = text(props.pop("precision", "fp32"), PREFIX + "precision")
    if precision not in _PRECISIONS:
        raise FieldError(PREFIX + "precision", " or ".join(_PRECISIONS), precision)
    known = {k: text(props.pop(k), PREFIX + k, limit=1000) for k in ("arch", "data", "rtdeploy_version") if k in props}
    return OnnxMeta(
        classes=class_names(json_values["classes"], PREFIX + "classes"),
        img_size=integer_text(props.pop("img_size"), PREFIX + "img_size", IMG_SIZE_MIN, IMG_SIZE_MAX),
        mean=rgb_triple(json_values["mean"], PREFIX + "mean", positive=False),
        std=rgb_triple(json_values["std"], PREFIX + "std", positive=True),
        pruning=pruning, split=None if split_ is None else split(split_, PREFIX + "split"),
        seed=integer_text(props.pop("seed"), PREFIX + "seed", 0, MAX_SEED) if "seed" in props else 0,
        precision=precision, **{"arch": "", **known}, extra=props)


def _check_io(model: onnx.ModelProto, meta: OnnxMeta) -> None:
    """One output of shape [N, len(classes)], and static input H/W equal to rtdeploy.img_size."""
    outputs = model.graph.output
    dims = [d.dim_value if d.HasField("dim_value") else None for d in outputs[0].type.tensor_type.shape.dim] \
        if len(outputs) == 1 else []
    if len(dims) != 2 or dims[1] not in (None, len(meta.classes)):
        got = f"{len(outputs)} outputs" if len(outputs) != 1 else "an output of shape [" + \
            ", ".join("?" if d is None else str(d) for d in dims) + "]"
        raise FieldError(PREFIX + "classes", f"the model's output [N, {len(meta.classes)}] (one logit per class)", got)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) == 1:
        hw = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim][2:]
        if any(d is not None and d != meta.img_size for d in hw):
            raise FieldError(PREFIX + "img_size", f"the model's input size {hw}", meta.img_size)


def _load_header(path: str | os.PathLike) -> onnx.ModelProto:
    if not os.path.isfile(path):
        raise ModelFileError(f"{show(path)} is not a file; pass an .onnx file written by 'rtdeploy export'")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, OSError
        raise ModelFileError(f"{show(path)} is not a readable ONNX file ({type(e).__name__}); export one with 'rtdeploy export'") from e
