"""`rtdeploy import`: weights trained elsewhere become an rtdeploy checkpoint, or a one-line exit-2 error."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from rtdeploy.checkpoint import load_checkpoint
from rtdeploy.data import load_splits, make_loader
from rtdeploy.models import create_model
from rtdeploy.train import evaluate

MEAN, STD = (0.45, 0.42, 0.40), (0.25, 0.24, 0.26)
ROOT = Path(__file__).resolve().parents[1]


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def _train_a_little(model: torch.nn.Module, splits, steps: int = 12) -> torch.nn.Module:
    """The user's own training loop: a few SGD steps, so accuracy is more than chance."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        for x, y in make_loader(splits.train, 16, shuffle=True, seed=step):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("RTDEPLOY_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "rtdeploy", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_import_round_trip_matches_the_original_module(cli, image_folder, tmp_path, fmt):
    """A torchvision model trained in the user's code, saved as a state_dict, imported through
    the real CLI: same logits, and the reported accuracy is the original module's on those images.
    The .pth file goes through a real process, the safetensors file through the same entry point
    in-process (the format is read by the library either way; a real process costs ~8 s)."""
    folder = image_folder(n_classes=3, per_class=8, size=32)
    splits = load_splits(str(folder), img_size=32, mean=MEAN, std=STD)
    torch.manual_seed(0)
    original = _train_a_little(torchvision.models.mobilenet_v3_small(num_classes=3), splits)
    weights = tmp_path / f"user.{fmt}"
    if fmt == "pth":
        torch.save({"epoch": 12, "state_dict": original.state_dict()}, weights)  # a full training checkpoint
    else:
        save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(weights))
    out, report = tmp_path / "imported.pt", tmp_path / "import.json"
    args = ["import", str(weights), "--arch", "tv/mobilenet_v3_small", "--data", str(folder), "--img-size", "32",
            "--mean", _csv(MEAN), "--std", _csv(STD), "--out", str(out), "--json", str(report)]
    if fmt == "pth":
        proc = _run_cli(*args)
        assert proc.returncode == 0, proc.stderr
    else:
        code, _, err = cli(*args)
        assert code == 0, err
    r = json.loads(report.read_text())
    expected = evaluate(original, splits.test)
    assert r["accuracy"] == expected.accuracy and r["eval_images"] == expected.images == len(splits.test)
    assert r["unwrapped"] == ("state_dict" if fmt == "pth" else None) and r["normalisation"] == "given"
    model, meta = load_checkpoint(out)
    assert meta.classes == ["class_0", "class_1", "class_2"] and meta.mean == MEAN and meta.img_size == 32
    x = splits.test.normalised()
    with torch.no_grad():
        assert torch.equal(model(x), original(x))


def test_import_measures_normalisation_and_takes_classes_from_a_folder(image_folder, tmp_path, cli):
    folder = image_folder(n_classes=3, per_class=6, size=32)
    torch.manual_seed(0)
    torch.save(create_model("tiny_se", 3).state_dict(), tmp_path / "w.pt")
    code, out, err = cli("import", tmp_path / "w.pt", "--arch", "tiny_se", "--classes", folder, "--data", folder,
                         "--img-size", "32", "--out", tmp_path / "c.pt", "--json", tmp_path / "r.json")
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    splits = load_splits(str(folder), img_size=32)
    assert r["mean"] == list(splits.mean) and r["std"] == list(splits.std)
    assert r["normalisation"].startswith("measured on") and 0.0 <= r["accuracy"] <= 1.0
    assert "accuracy" in out and load_checkpoint(tmp_path / "c.pt")[1].classes == splits.classes


@pytest.fixture
def tiny_weights(tmp_path) -> tuple[Path, dict]:
    torch.manual_seed(0)
    sd = create_model("tiny", 3).state_dict()
    return tmp_path, sd


def _import(cli, path: Path, *extra: str, arch: str = "tiny"):
    out = path.parent / "out.pt"
    code, _, err = cli("import", path, "--arch", arch, "--classes", "a,b,c", "--img-size", "32",
                       "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2", "--out", out, *extra)
    assert not out.exists(), "a failed import must not leave a checkpoint"
    return code, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtdeploy: error: "), err
    return lines[0]


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


FAILURES = {
    # name: (make the weights file from (dir, state_dict), words the one-line message must contain)
    "missing key": (lambda d, sd: _save(d / "w.pt", {k: v for k, v in sd.items() if k != "fc.weight"}),
                    ["missing key 'fc.weight'", "--arch"]),
    "unexpected key": (lambda d, sd: _save(d / "w.pt", {**sd, "extra.weight": torch.ones(2)}),
                       ["unexpected key 'extra.weight'", "--arch"]),
    "shape mismatch": (lambda d, sd: _save(d / "w.pt", {**sd, "conv1.weight": torch.ones(3, 3, 3, 3)}),
                       ["'conv1.weight'", "[3, 3, 3, 3]", "expects"]),
    "wrong class count": (lambda d, sd: _save(d / "w.pt", create_model("tiny", 5).state_dict()),
                          ["--classes lists 3 classes", "5 outputs"]),
    "not a state dict": (lambda d, sd: _save(d / "w.pt", [1, 2, 3]), ["not a state_dict", "list"]),
    "dict without weights": (lambda d, sd: _save(d / "w.pt", {"epoch": 3, "lr": 0.1}), ["not a state_dict"]),
    "pickled object": (lambda d, sd: _save(d / "w.pt", create_model("tiny", 3)),
                       ["pickled Python objects", "state_dict()"]),
    "corrupted torch file": (lambda d, sd: _truncated(_save(d / "w.pt", sd)), ["truncated, damaged"]),
    "corrupted safetensors": (lambda d, sd: _truncated(_safetensors(d / "w.safetensors", sd)),
                              ["truncated, damaged", "safetensors"]),
    "missing file": (lambda d, sd: d / "nope.pt", ["does not exist"]),
    # review 3: a classifier bias saved as a scalar was an internal IndexError; a head of fewer
    # than 2 outputs was answered "pass the 0 class names"
    "classifier bias a scalar": (lambda d, sd: _save(d / "w.pt", {**sd, "fc.bias": torch.zeros(())}),
                                 ["'fc.bias'", "[]", "expects [3]"]),
    "classifier of 0 outputs": (lambda d, sd: _save(d / "w.pt", {**sd, "fc.weight": sd["fc.weight"][:0].clone()}),
                                ["'fc.weight'", "[0, ", "expects [3, "]),
    # review 3: files that are neither zip nor pickle were said to hold pickled Python objects
    "a JSON file": (lambda d, sd: _bytes(d / "w.pt", b'{"fc.weight": [1, 2]}'), ["not a torch file"]),
    "a Keras HDF5 file": (lambda d, sd: _bytes(d / "w.h5", b"\x89HDF\r\n\x1a\n" + bytes(64)), ["not a torch file"]),
}


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _safetensors(path: Path, sd: dict) -> Path:
    save_file(sd, str(path))
    return path


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_import_failure_is_one_line_exit_2(tiny_weights, cli, case):
    folder, sd = tiny_weights
    make, words = FAILURES[case]
    code, err = _import(cli, make(folder, sd))
    line = _one_line(err)
    assert code == 2, line
    for word in words:
        assert word in line, (word, line)


def test_import_unknown_arch_lists_the_choices(tiny_weights, cli):
    folder, sd = tiny_weights
    code, err = _import(cli, _save(folder / "w.pt", sd), arch="tv/not_a_model")
    assert code == 2 and "unknown torchvision classification model 'not_a_model'" in _one_line(err)
    code, err = _import(cli, _save(folder / "w.pt", sd), arch="nonsense")
    assert code == 2 and "unknown architecture 'nonsense'" in _one_line(err) and "tiny_se" in err


def test_import_needs_normalisation_or_data(tiny_weights, cli):
    folder, sd = tiny_weights
    path = _save(folder / "w.pt", sd)
    code, _, err = cli("import", path, "--arch", "tiny", "--classes", "a,b,c", "--img-size", "32",
                       "--out", folder / "out.pt")
    assert code == 2 and "--mean and --std" in _one_line(err) and not (folder / "out.pt").exists()


def test_import_refuses_to_overwrite(tiny_weights, cli):
    folder, sd = tiny_weights
    path, out = _save(folder / "w.pt", sd), folder / "exists.pt"
    out.write_bytes(b"keep me")
    code, _, err = cli("import", path, "--arch", "tiny", "--classes", "a,b,c", "--img-size", "32",
                       "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2", "--out", out)
    assert code == 2 and "--force" in _one_line(err) and out.read_bytes() == b"keep me"


def test_pickled_object_is_refused_by_the_real_cli_without_traceback(tiny_weights):
    folder, _ = tiny_weights
    path = _save(folder / "model.pt", create_model("tiny", 3))
    proc = _run_cli("import", str(path), "--arch", "tiny", "--classes", "a,b,c", "--img-size", "32",
                    "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2", "--out", str(folder / "o.pt"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pickled Python objects" in _one_line(proc.stderr)
