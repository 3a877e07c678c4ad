"""Review 4 (hostile tester): --resume with changed settings, for train and compress.

A '.last' file is only valid for the command that wrote it; following the advice of an error
(raise --epochs) or changing an option must give one line and exit 2, never an internal error,
and never a progress bar line before the error on a non-terminal stderr.
"""
from __future__ import annotations

import pytest

from conftest import make_image_folder

IMG = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny_se model trained 1 epoch (its '.last' is the resume file) and a compress run of it."""
    from rtdeploy.cli.app import main

    root = tmp_path_factory.mktemp("review4")
    data = make_image_folder(root / "data", n_classes=3, per_class=6, size=24)
    assert main(["train", "--data", str(data), "--arch", "tiny_se", "--img-size", str(IMG), "--epochs", "1",
                 "--out", str(root / "m.pt")]) == 0
    assert main(["compress", str(root / "m.pt"), "--data", str(data), "--epochs", "1", "--ratio", "0.5",
                 "--out", str(root / "p.pt")]) == 0
    return {"root": root, "data": data}


def _one_line(code, err, needle):
    assert code == 2, err
    assert err.startswith("rtdeploy: error:") and err.count("\n") == 1, repr(err)
    assert needle in err and "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("extra", [["--epochs", "2"], ["--epochs", "2", "--schedule", "cosine"],
                                   ["--epochs", "1", "--batch-size", "4"]])
def test_train_resume_with_other_schedule_is_refused(cli, trained, tmp_path, extra):
    """The LR schedule of a '.last' spans its own --epochs x steps: a changed --epochs or
    --batch-size made OneCycleLR raise 'Tried to step N times' (internal error, exit 1)."""
    root = trained["root"]
    code, _, err = cli("train", "--data", trained["data"], "--arch", "tiny_se", "--img-size", IMG, "--epochs", "1",
                       *extra, "--out", tmp_path / "m2.pt", "--resume", root / "m.pt.last")
    if extra == ["--epochs", "1", "--batch-size", "4"]:  # epochs not raised: the finished run is refused first
        _one_line(code, err, "already finished 1 epochs")
    else:
        _one_line(code, err, "other training settings")
    assert not (tmp_path / "m2.pt").exists() and not (tmp_path / "m2.pt.last").exists()


def test_train_finished_resume_does_not_advise_raising_epochs(cli, trained, tmp_path):
    code, _, err = cli("train", "--data", trained["data"], "--arch", "tiny_se", "--img-size", IMG, "--epochs", "1",
                       "--out", tmp_path / "m2.pt", "--resume", trained["root"] / "m.pt.last")
    _one_line(code, err, "already finished 1 epochs")
    assert "raise --epochs" not in err


def test_compress_resume_with_other_settings_is_refused_before_decoding(cli, trained, tmp_path, monkeypatch):
    """The settings of a compress '.last' are compared before any image is decoded, and the
    error is the only stderr line (it used to follow a 'compress 0/9' progress line)."""
    def no_decoding(*a, **k):
        raise AssertionError("images were decoded before --resume was checked")

    monkeypatch.setattr("rtdeploy.cli.compress_cmd.load_data", no_decoding)
    root = trained["root"]
    code, _, err = cli("compress", root / "m.pt", "--data", trained["data"], "--epochs", "2", "--ratio", "0.5",
                       "--out", tmp_path / "q.pt", "--resume", root / "p.pt.last")
    _one_line(code, err, "other compress settings")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("std", ["1e-300,0.2,0.2", "0.2,1e-40,0.2", "0.2,0.2,1e-9"])
def test_import_refuses_a_std_that_is_zero_in_float32(cli, trained, tmp_path, std):
    """--std 1e-300 passed the (0, 1e6] check but is 0 in float32: eval then counted no image
    and export failed parity with 'max |diff| inf (allowed nan)'."""
    import torch

    weights = tmp_path / "w.pth"
    torch.save(torch.load(trained["root"] / "m.pt", weights_only=True)["state_dict"], weights)
    code, _, err = cli("import", weights, "--arch", "tiny_se", "--img-size", IMG, "--classes", "a,b,c",
                       "--mean", "0.5,0.5,0.5", "--std", std, "--out", tmp_path / "i.pt")
    _one_line(code, err, "--std entry")
    assert not (tmp_path / "i.pt").exists()


def test_a_checkpoint_with_a_tiny_std_is_refused_on_load(cli, trained, tmp_path):
    import json

    import torch

    raw = torch.load(trained["root"] / "m.pt", weights_only=True)
    meta = json.loads(raw["meta"])
    meta["std"] = [1e-300, 0.2, 0.2]
    raw["meta"] = json.dumps(meta)
    torch.save(raw, tmp_path / "bad.pt")
    code, _, err = cli("info", tmp_path / "bad.pt")
    _one_line(code, err, "meta.std")


def test_bench_cpus_list_is_bounded(cli, trained):
    """'--cpus 0-65536,0-65536,...' (100 parts: +130 MB, 10000 parts: ~13 GB) expanded every
    range into one list; '--cpus 0-1000' printed a 4 KB error line of CPU numbers."""
    import tracemalloc

    from rtdeploy.bench.config import parse_cpus
    from rtdeploy.errors import ConfigError

    tracemalloc.start()
    assert parse_cpus(",".join(["0-65535"] * 50)) == tuple(range(65536))  # unbounded: ~130 MB
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 << 20, peak
    with pytest.raises(ConfigError, match="0..65535"):
        parse_cpus("0-99999999999")
    code, _, err = cli("bench", trained["root"] / "m.pt", "--cpus", "0-1000")
    _one_line(code, err, "--cpus")
    assert len(err) < 400, len(err)


def test_resume_from_elsewhere_does_not_replace_existing_outputs(cli, trained, tmp_path):
    """--resume implied --force for every output, so resuming another run's '.last' with an --out
    that already exists replaced that file without a word. Only the run's own files are implied."""
    root, data = trained["root"], trained["data"]
    keep = tmp_path / "mine.pt"
    keep.write_bytes(b"a file the user keeps")
    code, _, err = cli("train", "--data", data, "--arch", "tiny_se", "--img-size", IMG, "--epochs", "1",
                       "--resume", root / "m.pt.last", "--out", keep)
    _one_line(code, err, "--force")
    code, _, err = cli("compress", root / "m.pt", "--data", data, "--epochs", "1", "--ratio", "0.5",
                       "--resume", root / "p.pt.last", "--out", keep)
    _one_line(code, err, "--force")
    assert keep.read_bytes() == b"a file the user keeps"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.pt"]
