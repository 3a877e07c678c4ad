"""Checkpoints round-trip exactly and never unpickle code."""
import pickle

import pytest
import torch

from rtdeploy.checkpoint import ModelMeta, load_checkpoint, read_checkpoint, save_checkpoint
from rtdeploy.errors import CheckpointError
from rtdeploy.models import create_model

META = dict(arch="tiny_se", classes=["a", "b", "c"], img_size=32, mean=(0.4, 0.4, 0.3), std=(0.2, 0.2, 0.2))


def _saved(tmp_path, model=None):
    model = model or create_model("tiny_se", 3)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, ModelMeta(**META, history=[{"stage": "train", "seed": 3}]))
    return path, model


def test_round_trip_reproduces_outputs_and_metadata(tmp_path):
    path, model = _saved(tmp_path)
    loaded, meta = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded(x))
    assert meta.classes == ["a", "b", "c"] and meta.mean == (0.4, 0.4, 0.3) and meta.img_size == 32
    assert meta.history[0]["seed"] == 3


class _Payload:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = marker
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": "rtdeploy-checkpoint", "x": _Payload()}, f)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_plain_torch_save_of_a_module_is_refused(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(create_model("tiny", 3), path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(path)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path, _ = _saved(tmp_path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(text)
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, weights)
    with pytest.raises(CheckpointError, match="not an rtdeploy checkpoint"):
        read_checkpoint(weights)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "m.pt", create_model("tiny", 3), ModelMeta(**META))
    assert list(tmp_path.iterdir()) == []


def test_weights_that_do_not_fit_the_arch_are_a_clear_error(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, create_model("tiny_se", 3), ModelMeta(**META))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["fc.weight"] = torch.zeros(3, 7)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_removed_blocks_are_recorded_and_the_reference_model_is_built_once(tmp_path, monkeypatch):
    # fit() saves '<out>.last' after every epoch: rebuilding the reference architecture at each
    # save cost ~10 % of a pruned fine-tuning epoch, so it is built once per (arch, classes).
    from rtdeploy import checkpoint
    from rtdeploy.models import attention_blocks
    from rtdeploy.models.structure import set_module

    checkpoint._non_identity_modules.cache_clear()
    built = []
    monkeypatch.setattr(checkpoint, "create_model", lambda *a: built.append(a) or create_model(*a))
    model = create_model("tiny_se", 3)
    gone = sorted(attention_blocks(model))
    assert gone
    for name in gone:
        set_module(model, name, torch.nn.Identity())
    for i in range(3):
        save_checkpoint(tmp_path / f"m{i}.pt", model, ModelMeta(**META))
    assert built == [("tiny_se", 3)]
    loaded, meta = load_checkpoint(tmp_path / "m2.pt")
    assert sorted(meta.structure["removed"]) == gone and not attention_blocks(loaded)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded(x))
