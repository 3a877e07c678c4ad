"""Checkpoints that load without unpickling code.

A checkpoint is a torch.save'd dict of tensors and strings only, read back with
`torch.load(weights_only=True)`: the restricted unpickler refuses any class or callable, so a
file crafted to run code on load is rejected, not executed. Metadata travels as a JSON string;
the module itself is rebuilt from the registry plus the recorded per-layer structure.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import pickle
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .errors import CheckpointError, RegistryError
from .fields import (MAX_JSON_CHARS, MAX_WIDTH, SPLIT_FIELDS, FieldError, brief, class_names, dict_of, img_size, integer, known_keys,
                     list_of_dicts, parse_json, rgb_triple, text)
from .fsutil import atomic_path
from .names import show
from .models import apply_structure, create_model, describe

FORMAT = "rtdeploy-checkpoint"
FORMAT_VERSION = 1


@dataclass
class ModelMeta:
    """Everything needed to rebuild and feed the model, besides its weights."""

    arch: str
    classes: list[str]
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    structure: dict | None = None  # per-layer widths + removed blocks, from models.describe
    history: list[dict] = field(default_factory=list)  # one summary per stage (train, compress)
    split_fingerprint: str | None = None  # the training split's files (rtdeploy/fingerprint.py); None in older checkpoints
    rtdeploy_version: str = __version__

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def pruning(self) -> dict | None:
        """The latest compress summary, if the model was compressed."""
        return next((h for h in reversed(self.history) if h.get("stage") == "compress"), None)


def resume_path(out: str | os.PathLike) -> Path:
    """'<out>.last': the state after the last complete epoch, beside the checkpoint `out`, that
    `--resume` continues from (train and compress share this convention)."""
    out = Path(out)
    return out.with_name(out.name + ".last")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta,
                    state: dict | None = None) -> None:
    """Write atomically. `state` (optimizer, epoch, ...) must be tensors/plain data only."""
    meta.structure = describe(model, _removed(model, meta))
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": json.dumps(asdict(meta)),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "state": state or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _removed(model: nn.Module, meta: ModelMeta) -> list[str]:
    """Blocks that were replaced by Identity relative to the registered architecture."""
    replaceable = _non_identity_modules(meta.arch, meta.num_classes)
    return [name for name, m in model.named_modules() if isinstance(m, nn.Identity) and name in replaceable]


@functools.lru_cache(maxsize=16)
def _non_identity_modules(arch: str, num_classes: int) -> frozenset[str]:
    # Building (and randomly initialising) the reference model took ~0.2 s for SE-ResNet18, paid
    # at every per-epoch save: ~10 % of a pruned fine-tuning epoch at 32 px. A registered name
    # always builds the same module tree (the registry refuses to re-register a name).
    return frozenset(name for name, m in create_model(arch, num_classes).named_modules()
                     if not isinstance(m, nn.Identity))


# ---------------------------------------------------------------- reading (every field checked)
#
# A checkpoint may come from anywhere: each value read from it is checked for type and range
# before use, and sizes are checked before anything is allocated (issue 10, classes 4 and 5):
# the zip entries must be stored (no compression bombs), the tensors may not hold more bytes than
# the file, and every recorded layer width must match the shape of the weight stored for it, so
# the rebuilt model is never larger than the file that describes it.

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"  # pickle protocol 2+: torch's legacy format or a plain pickle
_META_KEYS = {f.name for f in fields(ModelMeta)}
_REQUIRED_META = ("arch", "classes", "img_size", "mean", "std")
_MAX_FINGERPRINT = 64 << 20  # 6 bytes (base64: 8 chars) per file name: millions of images
_SPEC_KEYS = {"conv": ("in", "out", "groups"), "bn": ("features",), "linear": ("in", "out"),
              "ln": ("features",), "gn": ("groups", "features")}
_MAX_RANK = 8  # dimensions of one recorded tensor
_MAX_DEPTH = 32  # nesting of the pickled payload; rtdeploy's own is at most 6 deep


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{show(path)} has damaged metadata: {what}; re-create it with 'rtdeploy train' "
                           f"(or 'compress')")


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelMeta, dict, dict]:
    """(meta, state_dict, state) from `path`, refusing anything that is not our format."""
    path = Path(path)
    _check_is_file(path)
    _check_container(path)
    # torch warns while unpickling odd tensors (sparse layouts, ...) before our checks refuse
    # them; the user gets the one error line, not the warning too. Scoped to this read only.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read_checked(path)


def _read_checked(path: Path) -> tuple[ModelMeta, dict, dict]:
    payload = _safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{show(path)} is not an rtdeploy checkpoint; create one with 'rtdeploy train'")
    version = payload.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise CheckpointError(f"{show(path)} was written by a newer rtdeploy (format {version}); upgrade rtdeploy")
    try:
        _check_payload(payload, path.stat().st_size)
        meta = _parse_meta(payload["meta"])
    except FieldError as e:
        raise _damaged(path, str(e)) from e
    try:
        _check_structure(meta.structure, payload["state_dict"])
        _check_head(meta)
    except FieldError as e:
        raise CheckpointError(f"{show(path)}: weights do not fit the recorded structure ({e}); "
                              f"re-create the checkpoint with 'rtdeploy train' (or 'compress')") from e
    try:
        _check_weights(payload["state_dict"])
    except FieldError as e:
        raise CheckpointError(f"{show(path)} holds unusable weights: {e}; re-create the checkpoint with "
                              f"'rtdeploy train' (or 'compress') from a run that did not diverge") from e
    return meta, payload["state_dict"], payload.get("state", {})


def _check_is_file(path: Path) -> None:
    if path.is_file():
        return
    if path.is_dir():
        what = "is a directory, not a checkpoint file"
    elif path.exists():
        what = "is not a regular file (a device, FIFO or socket)"
    else:
        what = "does not exist"
    raise CheckpointError(f"checkpoint {show(path)} {what}; pass the .pt file written by 'rtdeploy train' or 'compress'")


def _check_container(path: Path) -> None:
    """A torch zip whose entries are stored as written, or a clear word about what it is instead."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == _ZIP_MAGIC:
        return _check_zip(path)
    if head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(f"{show(path)} holds pickled Python objects (torch's legacy format or a plain pickle) "
                              f"and was not loaded, to avoid running code; save a checkpoint with 'rtdeploy train'")
    if _is_onnx(path):
        raise CheckpointError(f"{show(path)} is an ONNX model, not an rtdeploy checkpoint; pass the .pt file it was "
                              f"exported from (or give the .onnx file to 'rtdeploy bench')")
    raise CheckpointError(f"{show(path)} is not an rtdeploy checkpoint (not a torch file); create one with 'rtdeploy train'")


# Serialized ModelProto fields in order: 1 ir_version (varint, tag 0x08), then one of producer_name,
# producer_version, domain, model_version, doc_string, graph, opset_import, metadata_props...
_ONNX_NEXT_TAGS = {0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42, 0x72, 0x7a}


def _is_onnx(path: Path) -> bool:
    """An ONNX file by its first bytes (no parse: a large foreign file is never read whole)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 3 or head[0] != 0x08:
        return False
    i = 1
    while i < len(head) and head[i] & 0x80:  # skip the ir_version varint
        i += 1
    return i + 1 < len(head) and head[i + 1] in _ONNX_NEXT_TAGS


def _check_zip(path: Path) -> None:
    check_zip_entries(path, "re-create the checkpoint with 'rtdeploy train'")


def check_zip_entries(path: Path, fix: str) -> None:
    """torch.save stores every entry uncompressed; a compressed entry can inflate a tiny file into
    gigabytes on load, so it is refused, and no entry may claim more bytes than the file has.
    Files that are not zip archives (torch's legacy format) are left to the loader."""
    with open(path, "rb") as f:
        if f.read(4) != _ZIP_MAGIC:
            return
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{show(path)} is truncated, damaged or not a torch file ({type(e).__name__}); "
                              f"re-create it") from e
    for info in entries:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size or info.file_size > size:
            raise CheckpointError(f"{show(path)} holds a compressed or oversized entry ({show(info.filename)}: "
                                  f"{info.file_size} bytes in a {size}-byte file), which torch.save never writes; "
                                  f"{fix}")


def _safe_load(path: Path):
    try:  # mmap: tensors stay in the file until used, so a checkpoint is checked before it fills memory
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{show(path)} holds pickled Python objects (e.g. a torch.save(model) file or a crafted payload) "
            f"and was not loaded, to avoid running code; save a checkpoint with 'rtdeploy train'"
        ) from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways inside the unpickler
        raise CheckpointError(f"{show(path)} is truncated, damaged or not a torch file ({type(e).__name__}); "
                              f"re-create it") from e


def _check_payload(payload: dict, file_size: int) -> None:
    version = payload.get("format_version")
    if type(version) is not int or version < 1:
        raise FieldError("format_version", f"an integer in 1..{FORMAT_VERSION}", version)
    known_keys(payload, "the checkpoint", ("format", "format_version", "meta", "state_dict", "state"))
    text(payload.get("meta"), "meta", limit=MAX_JSON_CHARS)  # a JSON string; parsed and bounded in _parse_meta
    state_dict = dict_of(payload.get("state_dict"), "state_dict")
    if not state_dict or not all(isinstance(t, torch.Tensor) for t in state_dict.values()):
        raise FieldError("state_dict", "a non-empty mapping of layer names to tensors", "other values")
    dict_of(payload.get("state", {}), "state")
    check_views(payload, "the checkpoint")
    held = sum(t.numel() * t.element_size() for t in state_dict.values())
    if held > file_size:  # each weight is stored once; more means views sharing one stored tensor
        raise FieldError("state_dict", f"tensors stored in the file (at most {file_size} bytes)",
                         f"{held} bytes of weights")


_FLOAT_KEYS = ("weight", "bias", "running_mean", "running_var")


def _check_weights(state_dict: dict) -> None:
    """Weights rtdeploy can compute with: float32 (BatchNorm's step counter int64), every value
    finite, every BatchNorm running variance >= 0. Anything else would be converted silently
    (bool/int/complex to float) or give garbage predictions that only fail later, as a parity
    or accuracy puzzle. float16/float64 are refused too: rtdeploy never writes them."""
    for name, t in state_dict.items():
        field = f"state_dict[{brief(name)}]"
        if name.endswith("num_batches_tracked"):
            if t.dtype != torch.int64:
                raise FieldError(field, "an int64 step count", f"a {str(t.dtype).removeprefix('torch.')} tensor")
            continue
        if t.dtype == torch.int64 and not name.endswith(_FLOAT_KEYS):
            continue  # an index buffer (e.g. a Swin block's relative_position_index), not a weight
        if t.dtype != torch.float32:
            raise FieldError(field, "a float32 tensor", f"a {str(t.dtype).removeprefix('torch.')} tensor")
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise FieldError(field, "finite", f"{bad} NaN or infinite values of {t.numel()}")
        if name.endswith("running_var") and bool((t < 0).any()):
            raise FieldError(field, "a variance (every value >= 0)", f"{int((t < 0).sum())} negative values")


def check_views(obj, where: str, depth: int = 0) -> None:
    """No tensor may declare more data than its storage holds: a stride-0 or sparse view of a few
    bytes can declare gigabytes, which the model or optimizer would then allocate."""
    if depth > _MAX_DEPTH:
        raise FieldError(where, f"nested at most {_MAX_DEPTH} levels deep", "deeper nesting")
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or obj.is_meta:
            raise FieldError(where, "dense tensors", f"a {obj.layout} tensor")
        if obj.numel() * obj.element_size() > obj.untyped_storage().nbytes():
            raise FieldError(where, "tensors backed by their stored data",
                             f"a {list(obj.shape)} view of {obj.untyped_storage().nbytes()} stored bytes")
    elif isinstance(obj, dict):
        for v in obj.values():
            check_views(v, where, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            check_views(v, where, depth + 1)


def _parse_meta(raw_text: str) -> ModelMeta:
    raw = dict_of(parse_json(raw_text, "meta"), "meta")
    known_keys(raw, "meta", _META_KEYS)
    missing = [k for k in _REQUIRED_META if k not in raw]
    if missing:
        raise FieldError(f"meta.{missing[0]}", "present", "nothing")
    history = list_of_dicts(raw.get("history", []), "meta.history")
    for record in history:
        _check_history(record)
    structure = raw.get("structure")
    return ModelMeta(
        arch=text(raw["arch"], "meta.arch", empty=False, limit=200),
        classes=class_names(raw["classes"], "meta.classes"),
        img_size=img_size(raw["img_size"], "meta.img_size"),
        mean=rgb_triple(raw["mean"], "meta.mean", positive=False),
        std=rgb_triple(raw["std"], "meta.std", positive=True),
        structure=None if structure is None else dict_of(structure, "meta.structure"),
        history=history,
        rtdeploy_version=text(raw.get("rtdeploy_version", ""), "meta.rtdeploy_version", limit=100),
        split_fingerprint=None if raw.get("split_fingerprint") is None
        else text(raw["split_fingerprint"], "meta.split_fingerprint", empty=False, limit=_MAX_FINGERPRINT))


def _check_history(record: dict) -> None:
    """The train record's split settings are used to rebuild the test split: check them."""
    text(record.get("stage", ""), "meta.history stage", limit=100)
    if record.get("stage") == "train":
        for key, check in SPLIT_FIELDS.items():
            if key in record:
                check(record[key], f"meta.history train {key}")


def _check_structure(structure: dict | None, state_dict: dict) -> None:
    """Every recorded width is a sane integer and matches the weight stored for that layer."""
    if structure is None:
        return
    known_keys(structure, "meta.structure", ("layers", "removed", "tensors"))
    removed = structure.get("removed", [])
    if not isinstance(removed, list):
        raise FieldError("meta.structure.removed", "a list of module names", removed)
    for name in removed:
        text(name, "meta.structure.removed entry", empty=False, limit=200)
    for name, spec in dict_of(structure.get("layers", {}), "meta.structure.layers").items():
        _check_spec(name, spec, state_dict)
    for key, shape in dict_of(structure.get("tensors", {}), "meta.structure.tensors").items():
        _check_tensor_shape(key, shape, state_dict)


def _check_tensor_shape(key: str, shape, state_dict: dict) -> None:
    """A recorded tensor shape is a short list of sane sizes, equal to the stored tensor's: the
    model allocates it before loading, so it may not claim more than the file holds."""
    field = f"meta.structure.tensors[{brief(key)}]"
    if not isinstance(shape, list) or len(shape) > _MAX_RANK:
        raise FieldError(field, f"a list of at most {_MAX_RANK} sizes", shape)
    dims = [integer(d, field, 0, MAX_WIDTH) for d in shape]
    stored = state_dict.get(key)
    if stored is None or list(stored.shape) != dims:
        got = "no stored tensor" if stored is None else f"a stored tensor of shape {list(stored.shape)}"
        raise FieldError(field, f"the shape of the stored tensor ({dims})", got)


def _check_head(meta: ModelMeta) -> None:
    """One class name per output of the classifier (the last linear layer recorded): a list of
    names longer than the head is a damaged or crafted file, not a model to rebuild around it."""
    layers = (meta.structure or {}).get("layers", {})
    linear = [spec for spec in layers.values() if spec.get("type") == "linear"]
    if linear and linear[-1]["out"] != len(meta.classes):
        raise FieldError("meta.classes", f"one name per output of the stored classifier ({linear[-1]['out']})",
                         f"{len(meta.classes)} names")


def _check_spec(name: str, spec, state_dict: dict) -> None:
    field = f"meta.structure.layers[{brief(name)}]"
    spec = dict_of(spec, field)
    kind = spec.get("type")
    if kind not in _SPEC_KEYS:
        raise FieldError(f"{field}.type", "conv, bn, linear, ln or gn", kind)
    known_keys(spec, field, ("type", *_SPEC_KEYS[kind]))
    dims = {k: integer(spec.get(k), f"{field}.{k}", 1, MAX_WIDTH) for k in _SPEC_KEYS[kind]}
    if kind == "conv" and (dims["in"] % dims["groups"] or dims["out"] % dims["groups"]):
        raise FieldError(f"{field}.groups", "a divisor of its in and out widths", dims["groups"])
    if kind == "gn" and dims["features"] % dims["groups"]:
        raise FieldError(f"{field}.groups", "a divisor of its width", dims["groups"])
    expected = {"conv": lambda s: tuple(s[:2]) == (dims["out"], dims["in"] // dims["groups"]) and len(s) == 4,
                "linear": lambda s: tuple(s) == (dims["out"], dims["in"]),
                "bn": lambda s: tuple(s) == (dims["features"],),
                "ln": lambda s: tuple(s) == (dims["features"],),
                "gn": lambda s: tuple(s) == (dims["features"],)}[kind]
    stored = state_dict.get(f"{name}.weight", state_dict.get(f"{name}.running_mean"))
    if stored is None and kind in ("ln", "gn"):
        return  # a norm without affine weights allocates nothing for its width
    if stored is None or not expected(stored.shape):
        got = "no stored weight" if stored is None else f"a stored weight of shape {list(stored.shape)}"
        raise FieldError(field, f"widths that match the stored weights ({dims})", got)


def build_model(meta: ModelMeta, path: str | os.PathLike = "checkpoint") -> nn.Module:
    """The registered architecture resized to the recorded structure."""
    try:
        model = create_model(meta.arch, meta.num_classes)
    except RegistryError as e:
        raise CheckpointError(f"{show(path)}: meta.arch {show(repr(meta.arch))} is not a known architecture ({e})") from e
    if meta.structure:
        try:
            apply_structure(model, meta.structure)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise _damaged(Path(path), f"meta.structure does not fit {meta.arch} ({_first_line(e)})") from e
    return model


def _first_line(e: Exception, limit: int = 300) -> str:
    """An exception's first line for a message, bounded: it may quote a crafted 100,000-character key."""
    text = show(str(e).splitlines()[0]) if str(e) else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def with_module_versions(model: nn.Module, state_dict: dict) -> dict:
    """`state_dict` carrying the per-module versions of `model`'s own state_dict: a plain dict
    of tensors loses them, and some modules (torchvision's MNASNet) refuse to load without."""
    out = collections.OrderedDict(state_dict)
    out._metadata = getattr(model.state_dict(), "_metadata", {})  # type: ignore[attr-defined]
    return out


def load_checkpoint(path: str | os.PathLike, *, check_forward: bool = True) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model (eval mode) and its metadata from `path`. `check_forward`: run one zero
    image through it (see _check_connects); off only where a caller times the first inference."""
    meta, state_dict, _ = read_checkpoint(path)
    model = build_model(meta, path)
    _check_dtypes(model, state_dict, path)
    try:
        model.load_state_dict(with_module_versions(model, state_dict), strict=True)
    except (RuntimeError, ValueError, TypeError) as e:
        if "can't allocate memory" in str(e):
            raise
        raise CheckpointError(f"{show(path)}: weights do not fit architecture {show(repr(meta.arch))} "
                              f"({_first_line(e)}); re-create the checkpoint") from e
    if check_forward:
        _check_connects(model.eval(), meta, path)
    return model.eval(), meta


def _check_dtypes(model: nn.Module, state_dict: dict, path) -> None:
    """Each stored tensor has the dtype of the tensor it fills: load_state_dict would cast an int64
    layer scale (which _check_weights lets through, as it would an index table) silently."""
    expected = model.state_dict()
    for key, t in state_dict.items():
        want = expected.get(key)
        if want is not None and want.dtype != t.dtype:
            raise CheckpointError(f"{show(path)}: state_dict[{brief(key)}] is a {str(t.dtype).removeprefix('torch.')} "
                                  f"tensor where the model has {str(want.dtype).removeprefix('torch.')}; "
                                  f"re-create the checkpoint with 'rtdeploy train' (or 'compress')")


def _check_connects(model: nn.Module, meta: ModelMeta, path) -> None:
    """Each recorded width matches its own stored weight, but only running the model shows that
    neighbours agree (a conv narrowed while its BatchNorm was not, a layer scale of another
    width): a damaged or crafted structure is refused here, not met inside torch by a command,
    which would blame the exporter or the pruner."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, meta.img_size, meta.img_size))
    except (RuntimeError, ValueError, IndexError) as e:
        if "can't allocate memory" in str(e):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _damaged(Path(path), f"meta.structure: its layers do not fit together ({show(first)[:200]})") from e
    if isinstance(out, torch.Tensor) and tuple(out.shape) != (1, meta.num_classes):
        raise _damaged(Path(path), f"meta.structure: the model gives {list(out.shape)} logits for one image, "
                                   f"not one per class in meta.classes ({meta.num_classes})")
