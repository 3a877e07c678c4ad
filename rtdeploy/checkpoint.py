"""Checkpoints that load without unpickling code.

A checkpoint is a torch.save'd dict of tensors and strings only, read back with
`torch.load(weights_only=True)`: the restricted unpickler refuses any class or callable, so a
file crafted to run code on load is rejected, not executed. Metadata travels as a JSON string;
the module itself is rebuilt from the registry plus the recorded per-layer structure.
"""
from __future__ import annotations

import collections
import json
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .errors import CheckpointError
from .fsutil import atomic_path
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


def build_model(meta: ModelMeta) -> nn.Module:
    model = create_model(meta.arch, meta.num_classes)
    if meta.structure:
        apply_structure(model, meta.structure)
    return model


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
    reference = dict(create_model(meta.arch, meta.num_classes).named_modules())
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Identity) and name in reference
            and not isinstance(reference[name], nn.Identity)]


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelMeta, dict, dict]:
    """(meta, state_dict, state) from `path`, refusing anything that is not our format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the file written by 'rtdeploy train' or 'compress'")
    payload = _safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rtdeploy checkpoint; create one with 'rtdeploy train'")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer rtdeploy (format {payload['format_version']}); upgrade rtdeploy")
    try:
        raw = json.loads(payload["meta"])
        raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
        meta = ModelMeta(**raw)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has damaged metadata ({e}); re-create it with 'rtdeploy train'") from e
    return meta, payload["state_dict"], payload.get("state", {})


def _safe_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds pickled Python objects (e.g. a torch.save(model) file or a crafted payload) "
            f"and was not loaded, to avoid running code; save a checkpoint with 'rtdeploy train'"
        ) from e
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways inside the unpickler
        raise CheckpointError(f"{path} is truncated, damaged or not a torch file ({type(e).__name__}); re-create it") from e


def with_module_versions(model: nn.Module, state_dict: dict) -> dict:
    """`state_dict` carrying the per-module versions of `model`'s own state_dict: a plain dict
    of tensors loses them, and some modules (torchvision's MNASNet) refuse to load without."""
    out = collections.OrderedDict(state_dict)
    out._metadata = getattr(model.state_dict(), "_metadata", {})  # type: ignore[attr-defined]
    return out


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model (eval mode) and its metadata from `path`."""
    meta, state_dict, _ = read_checkpoint(path)
    try:
        model = build_model(meta)
        model.load_state_dict(with_module_versions(model, state_dict), strict=True)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: weights do not fit architecture {meta.arch!r} ({str(e).splitlines()[0]})") from e
    return model.eval(), meta
