"""Issue 5, robustness and security, through the real `rtdeploy` entry point.

Every case runs the CLI (the `cli` fixture: cli.app.main in-process; a subprocess where a real
process matters) and checks the exit code, that stderr is one line naming the problem and the
fix, and that nothing (no output, no '*.tmp') is left behind.

Covered elsewhere and not repeated here: Ctrl-C / SIGTERM during train and compress and
--resume to the same result (test_interrupt.py); the CLI's garbage-bytes image, empty class
folder, unknown --arch and non-numeric --epochs (test_cli.py); compress --ratio 1.5,
--round-to 0 and CAP on a model without SE (test_compress.py); bench text-as-ONNX, non-image
graphs, --provider tensorrt/cuda/tpu and --batch-sizes 0 (test_bench.py); export option checks
(test_export.py); the library-level loaders behind these (test_data.py, test_checkpoint.py).
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image, make_image_folder
from rtdeploy.data import load_splits
from rtdeploy.models import create_model
from rtdeploy.train import TrainConfig
from rtdeploy.train.job import run_training

IMG = 16
FAST_TRAIN = ("--arch", "tiny_se", "--img-size", IMG, "--epochs", 1, "--batch-size", 8)
FAST_COMPRESS = ("--epochs", 1, "--batch-size", 8, "--calib-images", 8, "--ratio", 0.5)
FAST_BENCH = ("--runs", 2, "--warmup", 0, "--in-process")
DATALOADER_CRASH = "DataLoader worker (pid 123) is killed by signal: Killed."


# ---------------------------------------------------------------- helpers

def one_line_error(code: int, err: str, exit_code: int, *needles: str, fix: bool = True,
                   after_progress: bool = False) -> str:
    """The CLI's contract for a failure: one `rtdeploy: error:` line with a fix, no traceback.

    A flag value's fix is the flag's valid range ("--epochs must be >= 1"): pass fix=False and
    a needle for it; other errors say what to do after a ';' (or "use"/"retry"/"lower").
    Bad input fails before any work, so stderr is that line alone; a failure during the work
    (after_progress) may follow progress lines, and its message is the last line."""
    lines = err.strip().splitlines()
    assert code == exit_code, err
    assert "Traceback" not in err
    if after_progress:
        assert sum(line.startswith("rtdeploy:") for line in lines) == 1, err
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("rtdeploy: error:"), err
    assert not fix or ";" in lines[0] or " use " in lines[0] or "retry" in lines[0] or "lower" in lines[0], \
        f"no fix suggested: {lines[0]}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def no_tmp(*folders: Path) -> None:
    for folder in folders:
        assert not list(folder.rglob("*.tmp")), list(folder.rglob("*.tmp"))


# ---------------------------------------------------------------- module fixtures (built once)

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 3-class folder, a tiny_se checkpoint trained on it, its ONNX export, and a folder with
    the same number of images but other class names."""
    from rtdeploy.export import ExportConfig, export_checkpoint

    root = tmp_path_factory.mktemp("base")
    data = make_image_folder(root / "data", n_classes=3, per_class=8, size=24)
    other = make_image_folder(root / "other", n_classes=3, per_class=8, size=24, class_names=["a", "b", "c"])
    splits = load_splits(str(data), img_size=IMG, seed=0)
    ckpt = root / "base.pt"
    run_training(splits, "tiny_se", TrainConfig(epochs=1, batch_size=8, device="cpu"), ckpt)
    onnx_path = root / "base.onnx"
    export_checkpoint(ckpt, onnx_path, ExportConfig())
    return {"data": data, "other": other, "ckpt": ckpt, "onnx": onnx_path}


class _Marker:
    """Unpickling this calls Path.touch(marker): what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory, base):
    """name -> (path, marker or None): files that must never load (or run anything)."""
    d = tmp_path_factory.mktemp("untrusted")
    marker = d / "PWNED"
    evil = d / "evil.pt"
    torch.save({"format": "rtdeploy-checkpoint", "meta": _Marker(marker)}, evil)
    truncated = d / "truncated.pt"
    blob = base["ckpt"].read_bytes()
    truncated.write_bytes(blob[: len(blob) // 2])
    whole = d / "whole_model.pt"
    torch.save(create_model("tiny", 3), whole)
    assert not marker.exists()
    return {"pickle-payload": (evil, marker), "truncated": (truncated, None), "torch.save(model)": (whole, None)}


# ---------------------------------------------------------------- bad data

def _no_class_folders(root: Path) -> Path:
    root.mkdir()
    for i in range(4):
        make_image((200, 30, 30), 24, seed=i).save(root / f"img{i}.png")
    return root


def _single_class(root: Path) -> Path:
    return make_image_folder(root, n_classes=1, per_class=6, size=24)


def _truncated_image(root: Path) -> Path:
    make_image_folder(root, n_classes=2, per_class=6, size=24)
    whole = (root / "class_1" / "class_1_0.png").read_bytes()
    (root / "class_1" / "cut.png").write_bytes(whole[: len(whole) // 2])  # a copy in progress
    return root


@pytest.mark.parametrize("layout,needles", [
    ("missing", ["nowhere", "sample"]),
    ("no-class-folders", ["no class sub-folders", "<class>"]),
    ("single-class", ["one class"]),
    ("truncated-image", ["cut.png", "--skip-bad-images"]),
])
def test_bad_dataset_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, layout, needles):
    data = {"missing": lambda p: p, "no-class-folders": _no_class_folders, "single-class": _single_class,
            "truncated-image": _truncated_image}[layout](tmp_path / "nowhere")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = cli("train", "--data", data, *FAST_TRAIN, "--out", out_dir / "m.pt")
    one_line_error(code, err, 2, *needles)
    assert files(out_dir) == set()


def test_skip_bad_images_trains_and_counts_them(cli, tmp_path):
    data = _truncated_image(tmp_path / "data")
    (data / "class_0" / "garbage.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    code, _, err = cli("train", "--data", data, *FAST_TRAIN, "--skip-bad-images", "--out", tmp_path / "m.pt")
    assert code == 0, err
    assert "skipped 2 unreadable image(s)" in err
    summary = json.loads((tmp_path / "m.json").read_text())
    assert sum(summary["split"].values()) == 12  # the two bad files are not counted as images


def _save_modes(folder: Path, colour: tuple[int, int, int], seed: int) -> None:
    rgb = make_image(colour, 24, seed=seed)
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    wide = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(wide).save(folder / "sixteen.png")
    assert Image.open(folder / "sixteen.png").mode.startswith("I")
    rgb.convert("P").save(folder / "palette.png")
    rgb.save(folder / "plain.png")


def test_odd_image_modes_are_converted_and_other_files_ignored(cli, tmp_path):
    data = tmp_path / "data"
    for c, colour in enumerate([(210, 40, 40), (40, 200, 60)]):
        (data / f"class_{c}").mkdir(parents=True)
        _save_modes(data / f"class_{c}", colour, c)
        (data / f"class_{c}" / "notes.txt").write_text("not an image")
        (data / f"class_{c}" / ".DS_Store").write_bytes(b"\0\1\2")
    (data / "README.md").write_text("a file beside the class folders")
    code, _, err = cli("train", "--data", data, *FAST_TRAIN, "--out", tmp_path / "m.pt")
    assert code == 0, err
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["classes"] == 2 and sum(summary["split"].values()) == 12  # 6 modes x 2 classes


# ---------------------------------------------------------------- bad flag values

@pytest.mark.parametrize("command,args,flag", [
    ("train", ["--img-size", 7], "--img-size"),
    ("train", ["--img-size", -16], "--img-size"),
    ("train", ["--epochs", 0], "--epochs"),
    ("train", ["--epochs", -3], "--epochs"),
    ("train", ["--batch-size", 0], "--batch-size"),
    ("train", ["--batch-size", "eight"], "--batch-size"),
    ("train", ["--augment", "--crop-scale", 0], "--crop-scale"),
    ("train", ["--label-smoothing", 1], "--label-smoothing"),
    ("compress", ["--label-smoothing", -0.1], "--label-smoothing"),
    ("compress", ["--ratio", 0], "--ratio"),
    ("compress", ["--ratio", 1], "--ratio"),
    ("compress", ["--ratio", -0.2], "--ratio"),
    ("compress", ["--round-to", -8], "--round-to"),
    ("compress", ["--epochs", -1], "--epochs"),
    ("compress", ["--batch-size", 0], "--batch-size"),
    ("bench", ["--batch-sizes", "-1"], "--batch-sizes"),
    ("bench", ["--batch-sizes", ","], "--batch-sizes"),
    ("bench", ["--threads", "two"], "--threads"),
    ("bench", ["--threads", "1,0"], "--threads"),
    ("export", ["--batch-size", -1, "--static-batch"], "--batch-size"),
])
def test_bad_flag_value_names_the_flag_and_writes_nothing(cli, base, tmp_path, command, args, flag):
    out = {"train": tmp_path / "m.pt", "compress": tmp_path / "p.pt", "export": tmp_path / "m.onnx",
           "bench": tmp_path / "b.json"}[command]
    head = {"train": ["train", "--data", base["data"], "--arch", "tiny_se", "--out", out],
            "compress": ["compress", base["ckpt"], "--data", base["data"], "--out", out],
            "export": ["export", base["ckpt"], "--out", out],
            "bench": ["bench", base["onnx"], *FAST_BENCH, "--json", out]}[command]
    code, _, err = cli(*head, *args)
    one_line_error(code, err, 2, flag, fix=False)
    assert "must" in err or "Invalid value" in err
    assert files(tmp_path) == set()


# ---------------------------------------------------------------- classes and registries

@pytest.mark.parametrize("command", ["eval", "compress", "export", "bench"])
def test_dataset_with_other_classes_is_refused(cli, base, tmp_path, command):
    out = tmp_path / "out"
    argv = {"eval": ["eval", base["ckpt"], "--json", out],
            "compress": ["compress", base["ckpt"], *FAST_COMPRESS, "--out", out],
            "export": ["export", base["ckpt"], "--out", out],
            "bench": ["bench", base["onnx"], *FAST_BENCH, "--json", out]}[command]
    code, _, err = cli(*argv, "--data", base["other"])
    one_line_error(code, err, 2, "classes do not match")
    assert files(tmp_path) == set()


@pytest.mark.parametrize("what,args,valid", [
    ("arch", ["train", "--arch", "resnet19"], "tiny_se"),
    ("criterion", ["compress", "{ckpt}", "--criterion", "magnitude"], "cap"),
    ("loss", ["compress", "{ckpt}", "--loss", "focal"], "aml"),
    ("provider", ["bench", "{onnx}", "--provider", "tpu"], "cpu"),
])
def test_unknown_registry_name_lists_the_valid_ones(cli, base, tmp_path, what, args, valid):
    args = [base["ckpt"] if a == "{ckpt}" else base["onnx"] if a == "{onnx}" else a for a in args]
    out = ["--json", tmp_path / "b.json"] if what == "provider" else ["--out", tmp_path / "x.pt"]
    data = [] if what == "provider" else ["--data", base["data"]]
    code, _, err = cli(*args, *data, *out)
    one_line_error(code, err, 2, args[-1], valid, fix=False)
    assert files(tmp_path) == set()


# ---------------------------------------------------------------- untrusted files

@pytest.mark.parametrize("kind", ["pickle-payload", "truncated", "torch.save(model)"])
@pytest.mark.parametrize("command", ["info", "eval", "compress", "export", "bench"])
def test_untrusted_checkpoint_is_refused_and_runs_nothing(cli, base, untrusted, tmp_path, command, kind):
    path, marker = untrusted[kind]
    tail = {"info": ["--json", tmp_path / "i.json"], "eval": ["--data", base["data"], "--json", tmp_path / "e.json"],
            "compress": ["--data", base["data"], *FAST_COMPRESS, "--out", tmp_path / "p.pt"],
            "export": ["--out", tmp_path / "m.onnx"], "bench": [*FAST_BENCH, "--json", tmp_path / "b.json"]}[command]
    code, _, err = cli(command, path, *tail)
    needle = {"pickle-payload": "pickled Python objects", "truncated": "truncated",
              "torch.save(model)": "pickled Python objects"}[kind]
    one_line_error(code, err, 2, path.name, needle)
    assert files(tmp_path) == set()
    assert marker is None or not marker.exists()


def test_pickle_payload_in_a_real_process_runs_nothing(base, untrusted, tmp_path):
    path, marker = untrusted["pickle-payload"]
    proc = subprocess.run([sys.executable, "-m", "rtdeploy", "info", str(path)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "RTDEPLOY_DEBUG": ""})
    one_line_error(proc.returncode, proc.stderr, 2, "pickled Python objects")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["random-bytes", "truncated", "empty"])
def test_invalid_onnx_file_is_refused_by_bench(cli, base, tmp_path, kind):
    bad = tmp_path / "in" / "bad.onnx"
    bad.parent.mkdir()
    blob = base["onnx"].read_bytes()
    bad.write_bytes({"random-bytes": os.urandom(2048), "truncated": blob[: len(blob) // 2], "empty": b""}[kind])
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = cli("bench", bad, *FAST_BENCH, "--json", out / "b.json", "--markdown", out / "b.md")
    one_line_error(code, err, 2, "bad.onnx")
    assert files(out) == set()


# ---------------------------------------------------------------- outputs

def _full_run(command: str, base: dict, out: Path, *extra) -> list:
    return {"train": ["train", "--data", base["data"], *FAST_TRAIN, "--out", out],
            "compress": ["compress", base["ckpt"], "--data", base["data"], *FAST_COMPRESS, "--out", out],
            "export": ["export", base["ckpt"], "--out", out],
            "bench": ["bench", base["onnx"], *FAST_BENCH, "--json", out]}[command] + list(extra)


@pytest.mark.parametrize("command,name", [("train", "m.pt"), ("compress", "p.pt"), ("export", "m.onnx"),
                                          ("bench", "b.json")])
def test_existing_output_is_kept_without_force_and_replaced_with_it(cli, base, tmp_path, command, name):
    out = tmp_path / name
    out.write_bytes(b"precious")
    code, _, err = cli(*_full_run(command, base, out))
    one_line_error(code, err, 2, name, "--force")
    assert out.read_bytes() == b"precious" and files(tmp_path) == {name}
    code, _, err = cli(*_full_run(command, base, out, "--force"))
    assert code == 0, err
    assert out.read_bytes() != b"precious"
    no_tmp(tmp_path)


def test_train_keeps_an_existing_summary_json_without_force(cli, base, tmp_path):
    """'--out m.pt' also writes m.json: an unrelated m.json must not vanish silently."""
    (tmp_path / "m.json").write_text("mine")
    code, _, err = cli(*_full_run("train", base, tmp_path / "m.pt"))
    one_line_error(code, err, 2, "m.json", "--force")
    assert files(tmp_path) == {"m.json"} and (tmp_path / "m.json").read_text() == "mine"
    code, _, err = cli(*_full_run("train", base, tmp_path / "m.pt", "--force"))
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["arch"] == "tiny_se"


@pytest.fixture(params=["read-only folder", "parent is a file"])
def unwritable(request, tmp_path):
    """A folder under which nothing can be written."""
    if request.param == "read-only folder":
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        if os.access(folder, os.W_OK):  # root writes anywhere
            folder.chmod(0o700)
            pytest.skip("running as root: a read-only folder is still writable")
        yield folder
        folder.chmod(0o700)
    else:
        folder = tmp_path / "a_file"
        folder.write_text("")
        yield folder


@pytest.mark.parametrize("command,flag", [
    ("train", "--out"), ("compress", "--out"), ("export", "--out"),
    ("bench", "--json"), ("bench", "--markdown"), ("bench", "--plot"),
])
def test_unwritable_output_is_reported_before_any_long_work(cli, base, unwritable, monkeypatch, command, flag):
    def long_work(*args, **kwargs):
        raise AssertionError("long work started before the output was checked")

    import rtdeploy.bench
    import rtdeploy.cli.common
    import rtdeploy.compress
    import rtdeploy.data
    import rtdeploy.export
    import rtdeploy.train.job
    for target, name in ((rtdeploy.data, "load_splits"), (rtdeploy.cli.common, "load_data"),
                         (rtdeploy.train.job, "run_training"), (rtdeploy.compress, "compress"),
                         (rtdeploy.export, "export_checkpoint"), (rtdeploy.bench, "bench_models")):
        monkeypatch.setattr(target, name, long_work)
    for module in ("train_cmd", "compress_cmd"):
        monkeypatch.setattr(f"rtdeploy.cli.{module}.load_data", long_work)
    suffix = {"--json": "b.json", "--markdown": "b.md", "--plot": "b.png"}.get(flag, "m.onnx" if command == "export" else "m.pt")
    out = unwritable / suffix
    argv = _full_run(command, base, out) if command != "bench" else ["bench", base["onnx"], *FAST_BENCH, flag, out]
    code, _, err = cli(*argv)
    one_line_error(code, err, 2, flag, str(unwritable))
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "compress", "export", "bench"])
def test_failure_mid_write_leaves_no_file(cli, base, tmp_path, monkeypatch, command):
    """The disk fills up halfway through writing: no partial output, no temp file."""
    real = {"save": torch.save, "write_bytes": Path.write_bytes, "write_text": Path.write_text}

    def half(name):
        def write(first, second, *args, **kwargs):  # torch.save(obj, path); Path.write_*(path, data)
            path, data = (second, b"half a file") if name == "save" else (first, second)
            if not str(path).endswith(".tmp"):  # only the outputs' temp files hit the full disk
                return real[name](first, second, *args, **kwargs)
            real["write_bytes" if name == "save" else name](Path(path), data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return write

    for target, name in ((torch, "save"), (Path, "write_bytes"), (Path, "write_text")):
        monkeypatch.setattr(target, name, half(name))
    out = tmp_path / {"train": "m.pt", "compress": "p.pt", "export": "m.onnx", "bench": "b.json"}[command]
    code, _, err = cli(*_full_run(command, base, out))
    one_line_error(code, err, 1, out.name, "No space left on device", "nothing was written", after_progress=True)
    assert not out.exists()
    no_tmp(tmp_path)


# ---------------------------------------------------------------- determinism and records

def test_same_seed_same_split_and_model(cli, base, tmp_path):
    confusions = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.pt"
        code, _, err = cli("train", "--data", base["data"], *FAST_TRAIN, "--seed", 3, "--out", out)
        assert code == 0, err
        code, _, err = cli("eval", out, "--data", base["data"], "--json", tmp_path / f"{name}.eval.json")
        assert code == 0, err
        confusions.append(json.loads((tmp_path / f"{name}.eval.json").read_text()))
    assert confusions[0]["confusion"] == confusions[1]["confusion"]
    assert confusions[0]["per_class_images"] == confusions[1]["per_class_images"]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b"))
    assert a["split"] == b["split"] and a["seed"] == b["seed"] == 3
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]


def test_same_seed_same_pruned_structure(cli, base, tmp_path):
    widths = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.pt"
        code, _, err = cli("compress", base["ckpt"], "--data", base["data"], *FAST_COMPRESS, "--criterion", "random",
                           "--seed", 5, "--round-to", 1, "--out", out)
        assert code == 0, err
        code, _, err = cli("info", out, "--json", tmp_path / f"{name}.info.json")
        assert code == 0, err
        widths.append(json.loads((tmp_path / f"{name}.info.json").read_text())["widths"])
    original = json.loads(_info_json(cli, base["ckpt"], tmp_path / "orig.info.json"))["widths"]
    assert widths[0] == widths[1] and widths[0] != original


def _info_json(cli, ckpt: Path, path: Path) -> str:
    code, _, err = cli("info", ckpt, "--json", path)
    assert code == 0, err
    return path.read_text()


def test_every_report_records_seeds_settings_and_versions(cli, base, tmp_path):
    """train summary, compress report, export report, bench JSON: enough to repeat the run."""
    assert cli("train", "--data", base["data"], *FAST_TRAIN, "--seed", 2, "--out", tmp_path / "m.pt")[0] == 0
    assert cli("compress", tmp_path / "m.pt", "--data", base["data"], *FAST_COMPRESS, "--seed", 4,
               "--out", tmp_path / "p.pt")[0] == 0
    assert cli("export", tmp_path / "p.pt", "--out", tmp_path / "p.onnx", "--report", tmp_path / "x.json")[0] == 0
    benches = []
    for name in ("b1", "b2"):
        code, _, err = cli("bench", tmp_path / "p.onnx", *FAST_BENCH, "--batch-sizes", "1,2",
                           "--data", base["data"], "--json", tmp_path / f"{name}.json")
        assert code == 0, err
        benches.append(json.loads((tmp_path / f"{name}.json").read_text()))
    train = json.loads((tmp_path / "m.json").read_text())
    compress = json.loads((tmp_path / "p.json").read_text())
    export = json.loads((tmp_path / "x.json").read_text())
    assert train["seed"] == 2 and train["config"]["seed"] == 2
    assert compress["seed"] == 4
    assert export["metadata"]["seed"] == 2  # the training split, which bench --data rebuilds
    assert benches[0]["settings"] == benches[1]["settings"]
    assert benches[0]["settings"]["batch_sizes"] == [1, 2] and benches[0]["settings"]["runs"] == 2
    assert benches[0]["settings"]["input_seed"] == 0
    for report in (train, compress, export, benches[0]["environment"]):
        assert report["versions"]["rtdeploy"] and report["versions"]["torch"]
    assert benches[0]["environment"]["versions"]["onnxruntime"]


# ---------------------------------------------------------------- resources

@pytest.mark.parametrize("error,needle", [
    (RuntimeError(DATALOADER_CRASH), "--workers 0"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "--batch-size"),
    (MemoryError(), "--batch-size"),
])
@pytest.mark.parametrize("command", ["train", "compress"])
def test_worker_crash_and_out_of_memory_name_the_flag(cli, base, tmp_path, monkeypatch, command, error, needle):
    def crash(*args, **kwargs):
        raise error

    monkeypatch.setattr("rtdeploy.train.loop._train_epoch", crash)
    out = tmp_path / "m.pt"
    code, _, err = cli(*_full_run(command, base, out))
    one_line_error(code, err, 1, needle, after_progress=True)
    assert not out.exists() and not (tmp_path / "m.pt.last").exists()
    no_tmp(tmp_path)
