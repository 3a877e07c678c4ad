"""`rtdeploy import`: weights trained elsewhere -> an rtdeploy checkpoint.

A user's torchvision/timm/rtdeploy model, fine-tuned in their own code, arrives as a state_dict:
a `.pt`/`.pth` file read with `torch.load(weights_only=True)` (nothing in it is executed) or a
`.safetensors` file. Its keys and shapes must match the architecture exactly; the first key that
does not is named, because a partial load would silently leave random layers in the model.
With a dataset the import also reports accuracy on rtdeploy's test split, so the user sees that
normalisation, class order and weights are right before compressing.
"""
from __future__ import annotations

import logging
import pickle
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import fields
from .checkpoint import ModelMeta, check_views, check_zip_entries, load_checkpoint, save_checkpoint, with_module_versions
from .data import check_classes, load_splits
from .env import versions
from .errors import CheckpointError, ConfigError, PipelineError
from .fsutil import atomic_path
from .names import show
from .models import create_model
from .models.complexity import count_macs_params
from .train import evaluate

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "model_state", "ema")  # full training checkpoints
_HELP = "save model.state_dict() (torch.save or safetensors) and import that"


@dataclass
class ImportReport:
    arch: str
    source: str
    file_format: str  # "torch" or "safetensors"
    unwrapped: str | None  # the key a full training checkpoint kept its state_dict under
    prefix_stripped: str | None  # "module." of DataParallel / DDP
    tensors: int
    classes: list[str]
    img_size: int
    mean: tuple
    std: tuple
    normalisation: str  # "given" or "measured on <data>"
    params: int
    macs: int
    accuracy: float | None  # on the test split of `data` (rtdeploy's split: seed 0, 30 %)
    eval_images: int | None
    data: str | None
    checkpoint: str
    reload_ok: bool  # the written checkpoint reloads to identical outputs
    seconds: float
    versions: dict = field(default_factory=versions)


# ----------------------------------------------------------------------------- reading the file


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated, damaged or not a safetensors file ({e}); re-create it") from e


def _read_torch(path: Path):
    # A deflated entry can inflate a small file into gigabytes, and torch.save never compresses:
    # the same rule as for rtdeploy's own checkpoints, before anything is read.
    check_zip_entries(path, "save it again with torch.save(model.state_dict(), path)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head and not head.startswith(b"\x80") and head != b"PK\x03\x04":
        # neither torch's zip nor a pickle (JSON, HDF5, NumPy, ...): the unpickler's refusal
        # would be reported as "pickled Python objects", which would mislead
        raise CheckpointError(f"{show(path)} is not a torch file (nor safetensors); {_HELP}")
    try:  # mmap: tensors stay in the file until used, so they are checked before they fill memory
        with warnings.catch_warnings():  # torch warns about odd layouts before our checks refuse them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds pickled Python objects (e.g. a torch.save(model) file) and was not "
                              f"loaded, to avoid running code; {_HELP}") from e
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways inside the unpickler
        raise CheckpointError(f"{path} is truncated, damaged or not a torch file ({type(e).__name__}); "
                              "re-create or re-copy it") from e


def _sniff(path: Path) -> str:
    """'safetensors', 'onnx' or 'other', from the first bytes (whatever the file is named)."""
    from .checkpoint import _is_onnx

    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header itself
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    return "onnx" if _is_onnx(path) else "other"


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj, path: Path) -> tuple[dict, str | None]:
    """The state_dict itself, or the one a full checkpoint dict keeps under 'state_dict'/'model'/..."""
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                return obj[key], key
    what = type(obj).__name__ if not isinstance(obj, dict) else \
        f"a dict without tensors under {', '.join(repr(k) for k in _WRAPPER_KEYS[:2])}"
    raise CheckpointError(f"{path} is not a state_dict (it holds {what}); {_HELP}")


def _strip_prefix(sd: dict) -> tuple[dict, str | None]:
    prefix = "module."  # nn.DataParallel / DistributedDataParallel wrap every key
    if all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}, prefix
    return sd, None


def read_state_dict(path: str | Path) -> tuple[dict, str, str | None, str | None]:
    """(state_dict, file format, wrapper key, stripped prefix) from a .pt/.pth/.safetensors file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file {show(path)} does not exist; pass a .pt/.pth/.safetensors state_dict")
    if not path.is_file():
        raise CheckpointError(f"weights {show(path)} is not a regular file (a folder, FIFO or device); "
                              "pass a .pt/.pth/.safetensors state_dict file")
    kind = _sniff(path)
    if kind == "onnx":
        raise CheckpointError(f"{show(path)} is an ONNX model, not a state_dict; import the PyTorch weights it was "
                              "exported from (an ONNX file goes straight to 'rtdeploy bench')")
    if kind == "safetensors" or path.suffix.lower() == ".safetensors":
        sd, fmt, key = _read_safetensors(path), "safetensors", None
    else:
        sd, key = _unwrap(_read_torch(path), path)
        fmt = "torch"
    if not sd:
        raise CheckpointError(f"{path} holds no tensors; {_HELP}")
    try:  # sparse, meta, or a few stored bytes declaring a huge tensor: refused before any use
        check_views(sd, "the weights")
    except fields.FieldError as e:
        raise CheckpointError(f"{show(path)}: {e}; {_HELP}") from e
    sd, prefix = _strip_prefix(sd)
    return sd, fmt, key, prefix


# ----------------------------------------------------------------------------- matching the model


def _shape(t) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def _classifier_keys(model: nn.Module) -> set[str]:
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    return {f"{name}.{p}" for name in last for p in ("weight", "bias")}


def _check_shapes(model: nn.Module, sd: dict, arch: str, n_classes: int, classes_from: str = "--classes lists") -> None:
    expected, head = model.state_dict(), _classifier_keys(model)
    for key, want in expected.items():
        got = sd.get(key)
        if got is None or got.shape == want.shape:
            continue
        # a head of another class count (>= 2, as rtdeploy needs): say to pass those classes
        if key in head and got.dim() == want.dim() and got.shape[1:] == want.shape[1:] and got.shape[0] >= 2:
            raise ConfigError(f"{classes_from} {n_classes} classes but the weights' classifier '{key}' has "
                              f"{got.shape[0]} outputs; pass the {got.shape[0]} class names (or the dataset) "
                              "the model was trained on")
        raise ConfigError(f"weights do not fit --arch {arch}: key '{key}' has shape {_shape(got)} in the file, "
                          f"the model expects {_shape(want)}; pass the --arch the weights were trained with")


_FLOAT_SOURCES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_values(model: nn.Module, sd: dict) -> None:
    """Values the model can take without a silent change: a float parameter or buffer comes from a
    real float tensor (half/bfloat16/float64 widen or round to float32 as training frameworks
    save them; integers, bools and complex numbers would be cast or lose their imaginary part),
    every value finite, BatchNorm variances >= 0; an integer buffer (step counts, index tables)
    from an integer tensor."""
    for key, want in model.state_dict().items():
        got = sd.get(key)
        if got is None:
            continue  # reported as a missing key by load_weights
        kind = str(got.dtype).removeprefix("torch.")
        if want.is_floating_point():
            if got.dtype not in _FLOAT_SOURCES:
                raise CheckpointError(f"weights key '{show(key)}' is a {kind} tensor where the model needs floating-"
                                      f"point values; {_HELP}")
            finite = torch.isfinite(got)
            if not bool(finite.all()):
                raise CheckpointError(f"weights key '{show(key)}' holds {int((~finite).sum())} NaN or infinite values "
                                      f"of {got.numel()}; import weights from a run that did not diverge")
            if key.endswith("running_var") and bool((got < 0).any()):
                raise CheckpointError(f"weights key '{show(key)}' is a BatchNorm variance with negative values; "
                                      "the file is damaged or not what --arch expects")
        elif got.is_floating_point() or got.is_complex() or got.dtype == torch.bool:
            raise CheckpointError(f"weights key '{show(key)}' is a {kind} tensor where the model needs integers; {_HELP}")


def load_weights(model: nn.Module, sd: dict, arch: str, n_classes: int, classes_from: str = "--classes lists") -> None:
    """Load `sd` into `model` exactly: shapes first, then values, then missing and unexpected keys.
    `classes_from` says where the class count came from, for the message when the head differs."""
    _check_shapes(model, sd, arch, n_classes, classes_from)
    _check_values(model, sd)
    result = model.load_state_dict(with_module_versions(model, sd), strict=False)  # BN counters absent from old files are filled in
    if result.missing_keys:
        more = f" (and {len(result.missing_keys) - 1} more)" if len(result.missing_keys) > 1 else ""
        raise ConfigError(f"weights do not fit --arch {arch}: missing key '{result.missing_keys[0]}'{more}; "
                          "pass the --arch the weights were trained with")
    if result.unexpected_keys:
        more = f" (and {len(result.unexpected_keys) - 1} more)" if len(result.unexpected_keys) > 1 else ""
        raise ConfigError(f"weights do not fit --arch {arch}: unexpected key '{result.unexpected_keys[0]}'{more}; "
                          "pass the --arch the weights were trained with")


def check_img_size(model: nn.Module, arch: str, img_size: int) -> None:
    """One forward pass at `img_size`: some architectures need a minimum (inception 75) or fixed size."""
    if not fields.IMG_SIZE_MIN <= img_size <= fields.IMG_SIZE_MAX:
        raise ConfigError(f"--img-size must be between {fields.IMG_SIZE_MIN} and {fields.IMG_SIZE_MAX}, got {img_size}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, img_size, img_size))
    except (RuntimeError, ValueError, AssertionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--img-size {img_size} does not fit {arch} ({first[:160]}); use the size it was "
                          "trained at") from e
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- the import


def parse_classes(value: str, data_root: str | None = None) -> list[str]:
    """--classes: a class-folder dataset (its sub-folders, sorted as ImageFolder sorts them), or
    'sample'/'eurosat', or a comma-separated list of names in the order of the model's outputs."""
    from .data import _resolve, _scan_folder  # the same scan load_splits does, without decoding images

    if value in ("sample", "eurosat") or Path(value).expanduser().is_dir():
        return _scan_folder(_resolve(value, data_root)[0])[0]
    names = [c.strip() for c in value.split(",")]
    if any(not c for c in names):
        raise ConfigError(f"--classes {value!r} has an empty name; pass comma-separated names or a class-folder dataset")
    return names


def _normalisation(mean, std, splits) -> tuple[tuple, tuple, str]:
    if mean is not None and std is not None:
        return tuple(mean), tuple(std), "given"
    if (mean is None) != (std is None):
        raise ConfigError("pass both --mean and --std, or neither (then they are measured on --data)")
    if splits is None:
        raise ConfigError("pass --mean and --std (the normalisation the model was trained with, e.g. ImageNet's "
                          "0.485,0.456,0.406 and 0.229,0.224,0.225) or --data to measure them")
    return tuple(splits.mean), tuple(splits.std), f"measured on {splits.source} (train split)"


def _check_meta(classes: list[str], mean: tuple, std: tuple) -> None:
    """What the checkpoint loader will demand of the metadata, checked before anything is written."""
    try:
        fields.class_names(list(classes), "--classes")
        fields.rgb_triple(list(mean), "--mean", positive=False)
        fields.rgb_triple(list(std), "--std", positive=True)
    except fields.FieldError as e:
        raise ConfigError(f"{e}; pass the values the model was trained with") from e


def _write_verified(out: Path, model: nn.Module, meta: ModelMeta, img_size: int) -> None:
    """Write the checkpoint to a temp file, reload it, compare outputs, then rename it into place:
    a checkpoint that does not reload identically never replaces anything."""
    probe = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    with atomic_path(out) as tmp:
        save_checkpoint(tmp, model, meta)
        try:
            reloaded, _ = load_checkpoint(tmp)
        except CheckpointError as e:
            raise PipelineError(f"the imported checkpoint does not reload ({e}); {show(out)} was not written") from e
        with torch.no_grad():
            same = torch.equal(model.eval()(probe), reloaded(probe))
        if not same:
            raise PipelineError(f"the imported checkpoint does not reload to the same outputs; {show(out)} was not written")


def import_weights(weights: str | Path, *, arch: str, out: str | Path, img_size: int,
                   classes: list[str] | None = None, mean: tuple | None = None, std: tuple | None = None,
                   data: str | None = None, data_root: str | None = None, load=load_splits,
                   on_progress=None) -> ImportReport:
    """Build `arch`, load the state_dict in `weights` into it exactly, write an rtdeploy checkpoint.

    `classes`: the class names in the order of the model's outputs; default: the class folders of
    `data` (sorted, as ImageFolder orders them). `mean`/`std`: the training normalisation;
    default: measured on `data`'s train split. With `data`, accuracy on its test split.
    `load`: load_splits or a wrapper (the CLI's adds a progress bar).
    """
    t0, out = time.perf_counter(), Path(out)
    if classes is not None and len(classes) < 2:
        raise ConfigError(f"--classes must name at least 2 classes, got {len(classes)}")
    if classes is not None and len(set(classes)) != len(classes):
        raise ConfigError("--classes has duplicate names; each output of the model needs its own class")
    if classes is None and data is None:
        raise ConfigError("pass --classes (comma list or a class-folder dataset) or --data")
    if data is None or (mean is None) != (std is None):
        _normalisation(mean, std, None)  # missing --mean/--std fails before any loading
    model = create_model(arch, len(classes) if classes is not None else 2)  # unknown --arch: before any work
    sd, fmt, key, prefix = read_state_dict(weights)
    splits = None
    classes_from = "--classes lists"
    if data is not None:
        kwargs = {} if mean is None or std is None else {"mean": tuple(mean), "std": tuple(std)}
        splits = load(data, data_root=data_root, img_size=img_size, **kwargs)
        if classes is None:
            classes, classes_from = list(splits.classes), f"--data {show(splits.source)} has"
        check_classes(splits.classes, classes)
    model = create_model(arch, len(classes))
    load_weights(model, sd, arch, len(classes), classes_from)
    check_img_size(model, arch, img_size)
    mean, std, how = _normalisation(mean, std, splits)
    _check_meta(classes, mean, std)
    acc = evaluate(model, splits.test) if splits is not None else None
    meta = ModelMeta(arch=arch, classes=list(classes), img_size=img_size, mean=mean, std=std,
                     history=[{"stage": "import", "source": str(weights), "format": fmt, "unwrapped": key,
                               "normalisation": how, "accuracy": acc.accuracy if acc else None,
                               "data": splits.source if splits else None, "versions": versions()}])
    _write_verified(out, model, meta, img_size)
    macs, params = count_macs_params(model, img_size)
    log.info("imported %s (%d tensors) as %s into %s", weights, len(sd), arch, out)
    return ImportReport(arch=arch, source=str(weights), file_format=fmt, unwrapped=key, prefix_stripped=prefix,
                        tensors=len(sd), classes=list(classes), img_size=img_size, mean=mean, std=std,
                        normalisation=how, params=params, macs=macs,
                        accuracy=acc.accuracy if acc else None, eval_images=acc.images if acc else None,
                        data=splits.source if splits else None, checkpoint=str(out), reload_ok=True,
                        seconds=time.perf_counter() - t0)
