"""Issue 10, classes 4-7, 9, 10: hostile or mistaken files and flags through the real CLI.

Crafted checkpoints (torch.save'd dicts with edited fields) and ONNX files (edited
metadata_props, edited graphs) are built here from a real trained model. Each must give one
`rtdeploy: error:` line naming the damaged field, exit 2, no traceback, and write nothing.
Most cases run the entry point in-process (the `cli` fixture: cli.app.main, what users get);
those where the process itself matters (closed stdout, memory use, the bytes on stderr) run
`python -m rtdeploy` in a subprocess.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import make_image_folder
from test_robustness import FAST_BENCH, FAST_COMPRESS, files, no_tmp, one_line_error

IMG = 16
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 3-class folder, a tiny_se checkpoint trained on it (with its '.last'), its ONNX export."""
    from rtdeploy.data import load_splits
    from rtdeploy.export import ExportConfig, export_checkpoint
    from rtdeploy.train import TrainConfig
    from rtdeploy.train.job import run_training

    root = tmp_path_factory.mktemp("hostile")
    data = make_image_folder(root / "data", n_classes=3, per_class=8, size=24)
    ckpt = root / "base.pt"
    run_training(load_splits(str(data), img_size=IMG, seed=0), "tiny_se",
                 TrainConfig(epochs=1, batch_size=8, device="cpu"), ckpt)
    onnx_path = root / "base.onnx"
    export_checkpoint(ckpt, onnx_path, ExportConfig())
    return {"data": data, "ckpt": ckpt, "last": root / "base.pt.last", "onnx": onnx_path}


# `python -m rtdeploy`, which at exit writes its own peak RSS (env.peak_rss_mb, VmHWM) to a pipe.
# Not the rusage of the reaped child: Linux folds the peak of the pytest worker that started it
# into the child's ru_maxrss, so a worker that once held 2 GB made every child "use" 2 GB.
# Processes it started itself (bench workers) count too: their ru_maxrss holds at most this
# process's peak besides their own.
_MEASURED = ("import atexit, os, resource, runpy, sys\n"
             "from rtdeploy.env import peak_rss_mb\n"
             "def report():\n"
             "    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
             "    os.write(int(os.environ['RTDEPLOY_TEST_PEAK_FD']), b'%d' % max(peak_rss_mb(), kids))\n"
             "atexit.register(report)\n"
             "sys.argv[0] = 'rtdeploy'\n"
             "runpy.run_module('rtdeploy', run_name='__main__', alter_sys=True)\n")


def run_process(*args, timeout: int = 180, stdout=None, **kwargs) -> tuple[int, str, str, int]:
    """`python -m rtdeploy args` in a real process: (exit code, stdout, stderr, its peak RSS in MB).

    Killed after `timeout` s; the peak comes through a pipe of its own, written at exit."""
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "RTDEPLOY_DEBUG": "", "PYTHONPATH": str(ROOT), "RTDEPLOY_TEST_PEAK_FD": str(write_fd)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            proc = subprocess.Popen([sys.executable, "-c", _MEASURED, *map(str, args)], env=env, text=True,
                                    stdout=stdout or out, stderr=err, pass_fds=(write_fd,), **kwargs)
        finally:
            os.close(write_fd)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with os.fdopen(read_fd, "rb") as pipe:
            peak = pipe.read()
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), int(peak or 0)


# ---------------------------------------------------------------- crafted checkpoints (class 4)

_UNSET = object()


def craft(src: Path, dst: Path, edit) -> Path:
    """Copy the checkpoint `src` to `dst` with `edit(payload, meta)` applied to its contents."""
    payload = torch.load(src, weights_only=True)
    meta = json.loads(payload["meta"])
    payload["meta"] = _UNSET
    edit(payload, meta)
    if payload.get("meta") is _UNSET:
        payload["meta"] = json.dumps(meta)
    torch.save(payload, dst)
    return dst


def _meta(key, value):
    return lambda p, m: m.__setitem__(key, value)


def _layer(name, key, value):
    return lambda p, m: m["structure"]["layers"][name].__setitem__(key, value)


def _train_record(key, value):
    return lambda p, m: m["history"][0].__setitem__(key, value)


def _nested(depth):
    return lambda p, m: p.__setitem__("meta", "[" * depth + "]" * depth)


def _wide_fc(p, m):
    """Recorded widths describe a 40000 x 40000 classifier; the stored weight is the real 3 x 32."""
    m["structure"]["layers"]["fc"].update({"in": 40000, "out": 40000})


def _unconnected(p, m):
    """conv1 narrowed to 8 outputs (its recorded width and stored weight agree), bn1 left at 16:
    each width matches its weight, but the layers do not fit together."""
    p["state_dict"]["conv1.weight"] = p["state_dict"]["conv1.weight"][:8].clone()
    m["structure"]["layers"]["conv1"]["out"] = 8


def _broadcast_view(p, m):
    """A weight stored as 4 bytes but declaring 32 x 3 (a stride-0 view), like a huge one would."""
    p["state_dict"]["fc.weight"] = torch.zeros(1).expand(3, 32)


DAMAGE = {
    "img_size negative": (_meta("img_size", -16), "meta.img_size"),
    "img_size a string": (_meta("img_size", "64"), "meta.img_size"),
    "img_size NaN": (_meta("img_size", float("nan")), "meta.img_size"),
    "img_size 100000": (_meta("img_size", 100000), "meta.img_size"),
    "img_size 9000 (memory bomb)": (_meta("img_size", 9000), "meta.img_size"),
    "img_size a bool": (_meta("img_size", True), "meta.img_size"),
    "classes not a list": (_meta("classes", "class_0,class_1"), "meta.classes"),
    "classes of numbers": (_meta("classes", [1, 2, 3]), "meta.classes"),
    "classes repeated": (_meta("classes", ["a", "a", "b"]), "meta.classes"),
    "classes a single one": (_meta("classes", ["only"]), "meta.classes"),
    "mean a string": (_meta("mean", "0.5"), "meta.mean"),
    "mean with Infinity": (_meta("mean", [0.5, float("inf"), 0.5]), "meta.mean"),
    "std zero": (_meta("std", [0.2, 0.0, 0.2]), "meta.std"),
    "arch unknown": (_meta("arch", "resnet19"), "meta.arch"),
    "arch missing": (lambda p, m: m.pop("arch"), "meta.arch"),
    "unknown meta field": (_meta("surprise", 1), "meta"),
    "history not a list": (_meta("history", "train"), "meta.history"),
    "train seed a string": (_train_record("seed", "zero"), "seed"),
    "train test_frac 5": (_train_record("test_frac", 5), "test_frac"),
    "removed not a list": (lambda p, m: m["structure"].__setitem__("removed", 5), "meta.structure.removed"),
    "removed names a missing block": (lambda p, m: m["structure"].__setitem__("removed", ["no.such"]),
                                      "meta.structure"),
    "width a string": (_layer("conv1", "out", "16"), "conv1"),
    "width zero": (_layer("layer1.0.conv1", "in", 0), "layer1.0.conv1"),
    "groups zero": (_layer("conv1", "groups", 0), "groups"),
    "groups not a divisor": (_layer("layer1.0.conv1", "groups", 3), "groups"),
    "layer type unknown": (_layer("bn1", "type", "lstm"), "bn1"),
    "widths 40000x40000 (memory bomb)": (_wide_fc, "fc"),
    "tensor shape not the stored one": (lambda p, m: m["structure"].__setitem__("tensors", {"fc.weight": [40000, 40000]}),
                                        "meta.structure.tensors"),
    "tensor shape not a list": (lambda p, m: m["structure"].__setitem__("tensors", {"fc.weight": "3x32"}),
                                "meta.structure.tensors"),
    "tensors not a dict": (lambda p, m: m["structure"].__setitem__("tensors", [1]), "meta.structure.tensors"),
    "layer norm width not stored": (lambda p, m: m["structure"]["layers"].__setitem__("bn1", {"type": "ln", "features": 7}),
                                    "bn1"),
    "widths that do not connect": (_unconnected, "meta.structure"),
    # its stored shape, but set alone it would leave fc.in_features/out_features disagreeing with it
    "a layer's weight under tensors": (lambda p, m: m["structure"].__setitem__("tensors", {"fc.weight": [3, 32]}),
                                       "meta.structure"),
    "format_version a string": (lambda p, m: p.__setitem__("format_version", "1"), "format_version"),
    "format_version from the future": (lambda p, m: p.__setitem__("format_version", 99), "newer rtdeploy"),
    "state_dict a list": (lambda p, m: p.__setitem__("state_dict", [1, 2]), "state_dict"),
    "state_dict of strings": (lambda p, m: p["state_dict"].__setitem__("fc.weight", "w"), "state_dict"),
    "weight a broadcast view": (_broadcast_view, "stored data"),
    "meta not JSON": (lambda p, m: p.__setitem__("meta", "{not json"), "meta"),
    "meta nested 100000 deep": (_nested(100_000), "meta"),
    "meta a list": (lambda p, m: p.__setitem__("meta", "[]"), "meta"),
    "unknown top-level key": (lambda p, m: p.__setitem__("extra", 1), "extra"),
}


@pytest.mark.parametrize("kind", [*DAMAGE, "zip entries compressed"])
def test_damaged_checkpoint_names_the_field(cli, base, tmp_path, kind):
    if kind == "zip entries compressed":  # a few KB could inflate to gigabytes of zeros
        bad, needle = _compressed_copy(base["ckpt"], tmp_path / "bad.pt"), "compressed"
    else:
        edit, needle = DAMAGE[kind]
        bad = craft(base["ckpt"], tmp_path / "bad.pt", edit)
    before = files(tmp_path)
    code, _, err = cli("info", bad, "--json", tmp_path / "i.json")
    one_line_error(code, err, 2, "bad.pt", needle)
    assert "internal error" not in err
    assert files(tmp_path) == before


@pytest.mark.parametrize("case", ["checkpoint field", "onnx key", "numeric option"])
def test_damaged_files_and_bad_numbers_in_a_real_process(base, tmp_path, case):
    """The in-process tests above, once each through a real `python -m rtdeploy`: exactly one
    line on the process's own stderr, exit 2, no traceback, nothing written."""
    if case == "checkpoint field":
        bad = craft(base["ckpt"], tmp_path / "bad.pt", _meta("img_size", "64"))
        args, needle = ["info", bad, "--json", tmp_path / "i.json"], "meta.img_size"
    elif case == "onnx key":
        bad = edit_onnx(base["onnx"], tmp_path / "bad.onnx", split="[0, 0.3]")
        args, needle = ["bench", bad, *FAST_BENCH, "--json", tmp_path / "b.json"], "rtdeploy.split"
    else:
        args, needle = ["train", "--data", base["data"], "--lr", "inf", "--out", tmp_path / "m.pt"], "--lr"
    before = files(tmp_path)
    code, _, err, _ = run_process(*args, timeout=120)
    # A flag's fix is its valid range ("--lr must be a finite number in (0, 100]").
    one_line_error(code, err, 2, needle, fix=case != "numeric option")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert files(tmp_path) == before


@pytest.mark.parametrize("command", ["eval", "compress", "export", "bench"])
@pytest.mark.parametrize("damage", ["img_size", "widths that do not connect"])
def test_damaged_checkpoint_is_refused_by_every_command(cli, base, tmp_path, command, damage):
    # widths that do not connect used to fail inside each command instead: info with an internal
    # error, export and bench blaming the exporter, compress calling tiny_se unprunable.
    edit, needle = (_meta("img_size", "sixty-four"), "meta.img_size") if damage == "img_size" else DAMAGE[damage]
    bad = craft(base["ckpt"], tmp_path / "bad.pt", edit)
    tail = {"eval": ["--data", base["data"], "--json", tmp_path / "e.json"],
            "compress": ["--data", base["data"], *FAST_COMPRESS, "--out", tmp_path / "p.pt"],
            "export": ["--out", tmp_path / "m.onnx"], "bench": [*FAST_BENCH, "--json", tmp_path / "b.json"]}[command]
    code, _, err = cli(command, bad, *tail)
    one_line_error(code, err, 2, "bad.pt", needle)
    assert files(tmp_path) == {"bad.pt"}


def _compressed_copy(src: Path, dst: Path) -> Path:
    """The same checkpoint with every zip entry deflated: a few KB could hold gigabytes of zeros."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    return dst


@pytest.mark.parametrize("kind,needle", [
    ("widths", "fc"), ("img_size", "meta.img_size"), ("view", "stored data"),
])
def test_memory_bombs_are_refused_before_allocating(base, tmp_path, kind, needle):
    """A real process: refused with exit 2, and its peak memory stays that of a small run."""
    from rtdeploy.models import create_model

    if kind == "view":  # 160 GB declared by a view of 4 stored bytes, with matching recorded widths
        def edit(p, m):
            p["state_dict"]["fc.weight"] = torch.zeros(1).expand(40000, 1_000_000)
            m["structure"]["layers"]["fc"].update({"in": 1_000_000, "out": 40000})
        bad = craft(base["ckpt"], tmp_path / "bad.pt", edit)
    else:
        bad = craft(base["ckpt"], tmp_path / "bad.pt", _wide_fc if kind == "widths" else _meta("img_size", 9000))
    assert bad.stat().st_size < 200_000 and create_model("tiny_se", 3) is not None
    code, _, err, peak_mb = run_process("info", bad)
    one_line_error(code, err, 2, "bad.pt", needle)
    assert 0 < peak_mb < 1500, f"peak RSS {peak_mb} MB"


# ---------------------------------------------------------------- crafted ONNX metadata (class 4, 5)

def edit_onnx(src: Path, dst: Path, **props) -> Path:
    """Copy `src` with rtdeploy.<key> set to each given value (None removes the key)."""
    model = onnx.load(str(src))
    kept = [p for p in model.metadata_props if p.key[len("rtdeploy."):] not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        if value is not None:
            model.metadata_props.add(key=f"rtdeploy.{key}", value=value)
    onnx.save(model, str(dst))
    return dst


def _symbolic_hw(src: Path, dst: Path, img_size: str) -> Path:
    """H and W made symbolic, so the input size comes from rtdeploy.img_size alone."""
    edit_onnx(src, dst, img_size=img_size)
    model = onnx.load(str(dst))
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("h", "w")):
        dim.Clear()
        dim.dim_param = name
    onnx.save(model, str(dst))
    return dst


def _scalar_output(src: Path, dst: Path) -> Path:
    """The logits summed to one scalar: the graph still runs, but it is not a classifier."""
    model = onnx.load(str(src))
    logits = model.graph.output[0].name
    model.graph.node.append(helper.make_node("ReduceSum", [logits], ["total"], keepdims=0))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("total", TensorProto.FLOAT, []))
    onnx.save(model, str(dst))
    return dst


ONNX_DAMAGE = {
    "split a list": ({"split": "[0, 0.3]"}, "rtdeploy.split"),
    "split with an unknown key": ({"split": '{"seed": 0, "test_frac": 0.3, "shuffle": true}'}, "rtdeploy.split"),
    "split test_frac NaN": ({"split": '{"seed": 0, "test_frac": NaN}'}, "rtdeploy.split.test_frac"),
    "img_size a word": ({"img_size": "sixteen"}, "rtdeploy.img_size"),
    "img_size 100000": ({"img_size": "100000"}, "rtdeploy.img_size"),
    "img_size unlike the input": ({"img_size": "32"}, "rtdeploy.img_size"),
    "mean a string": ({"mean": '"0.5"'}, "rtdeploy.mean"),
    "std negative": ({"std": "[0.2, -0.2, 0.2]"}, "rtdeploy.std"),
    "classes a mapping": ({"classes": '{"a": 1}'}, "rtdeploy.classes"),
    "classes not JSON": ({"classes": "[class_0, class_1"}, "rtdeploy.classes"),
    "classes more than outputs": ({"classes": '["a", "b", "c", "d"]'}, "rtdeploy.classes"),
    "seed negative": ({"seed": "-1"}, "rtdeploy.seed"),
    "precision unknown": ({"precision": "fp64"}, "rtdeploy.precision"),
    "pruning a nested record": ({"pruning": '{"ratio": [0.5]}'}, "rtdeploy.pruning"),
    "mean missing": ({"mean": None}, "rtdeploy.mean"),
}


@pytest.mark.parametrize("kind", list(ONNX_DAMAGE) + ["output a scalar", "symbolic H/W, img_size 100000"])
def test_damaged_onnx_metadata_names_the_key(cli, base, tmp_path, kind):
    bad = tmp_path / "bad.onnx"
    if kind == "output a scalar":
        _scalar_output(base["onnx"], bad)
        needle = "rtdeploy.classes"
    elif kind.startswith("symbolic"):
        _symbolic_hw(base["onnx"], bad, "100000")
        needle = "rtdeploy.img_size"
    else:
        props, needle = ONNX_DAMAGE[kind]
        edit_onnx(base["onnx"], bad, **props)
    code, _, err = cli("bench", bad, *FAST_BENCH, "--json", tmp_path / "b.json")
    one_line_error(code, err, 2, needle)
    assert "internal error" not in err
    assert files(tmp_path) == {"bad.onnx"}


def test_unknown_rtdeploy_keys_are_kept_not_fatal(base, tmp_path):
    from rtdeploy.export import read_metadata

    meta = read_metadata(edit_onnx(base["onnx"], tmp_path / "extra.onnx", note="hello"))
    assert meta.extra.get("note") == "hello" and meta.img_size == IMG  # (also rtdeploy.exporter)


# ---------------------------------------------------------------- output paths (class 6)

def test_info_json_onto_its_own_checkpoint_is_refused_even_with_force(cli, base, tmp_path):
    ckpt = tmp_path / "ck.pt"
    ckpt.write_bytes(base["ckpt"].read_bytes())
    blob = ckpt.read_bytes()
    for extra in ([], ["--force"]):
        code, _, err = cli("info", ckpt, "--json", ckpt, *extra)
        one_line_error(code, err, 2, "--json", "ck.pt")
        assert ckpt.read_bytes() == blob
    link = tmp_path / "alias.json"
    os.link(ckpt, link)  # a hard link: another name for the very same file
    code, _, err = cli("info", ckpt, "--json", link, "--force")
    one_line_error(code, err, 2, "--json", "would overwrite the input")
    sym = tmp_path / "sym.json"
    sym.symlink_to(ckpt)
    code, _, err = cli("eval", ckpt, "--data", base["data"], "--json", sym, "--force")
    one_line_error(code, err, 2, "--json", "would overwrite the input")
    assert ckpt.read_bytes() == blob


@pytest.mark.parametrize("command", ["eval", "info"])
def test_eval_and_info_json_need_force(cli, base, tmp_path, command):
    out = tmp_path / "r.json"
    out.write_text("mine")
    data = ["--data", base["data"]] if command == "eval" else []
    code, _, err = cli(command, base["ckpt"], *data, "--json", out)
    one_line_error(code, err, 2, "--json", "--force")
    assert out.read_text() == "mine"
    code, _, err = cli(command, base["ckpt"], *data, "--json", out, "--force")
    assert code == 0, err
    assert json.loads(out.read_text())["arch"] == "tiny_se"


@pytest.mark.parametrize("argv,needles", [
    (["train", "--data", "{data}", "--arch", "tiny", "--out", "{tmp}/m.json"], ["m.json", "same file"]),
    (["compress", "{ckpt}", "--data", "{data}", "--out", "{tmp}/p.json"], ["p.json", "same file"]),
    (["export", "{ckpt}", "--out", "{tmp}/m.onnx", "--report", "{tmp}/m.onnx"], ["--report", "same file"]),
    (["export", "{ckpt}", "--out", "{tmp}/m.onnx", "--int8", "--calib-data", "{data}", "--report",
      "{tmp}/m.int8.onnx"], ["INT8", "same file"]),
    (["export", "{ckpt}", "--out", "{ckpt}", "--force"], ["--out", "would overwrite the input"]),
    (["compress", "{ckpt}", "--data", "{data}", "--out", "{ckpt}", "--force"], ["--out", "would overwrite"]),
    (["train", "--data", "{data}", "--arch", "tiny", "--out", "{data}/class_0/m.pt"], ["inside the input folder"]),
    (["bench", "{onnx}", *FAST_BENCH, "--json", "{tmp}/r", "--markdown", "{tmp}/r"], ["--markdown", "same file"]),
    (["bench", "{onnx}", *FAST_BENCH, "--json", "{onnx}", "--force"], ["--json", "would overwrite"]),
    (["train", "--data", "{data}", "--out", ""], ["--out", "names no file"]),
    (["compress", "{ckpt}", "--data", "{data}", "--out", ""], ["--out", "names no file"]),
    (["export", "{ckpt}", "--out", ""], ["--out", "names no file"]),
    (["info", "{ckpt}", "--json", "{tmp}/"], ["--json", "is a directory"]),
])
def test_an_output_may_not_be_an_input_or_another_output(cli, base, tmp_path, argv, needles):
    sub = {"{data}": str(base["data"]), "{ckpt}": str(base["ckpt"]), "{onnx}": str(base["onnx"]), "{tmp}": str(tmp_path)}
    args = [a for a in argv]
    for i, a in enumerate(args):
        for key, value in sub.items():
            args[i] = str(args[i]).replace(key, value)
    inputs = {p: p.read_bytes() for p in (base["ckpt"], base["onnx"])}
    data_files = files(base["data"])
    code, _, err = cli(*args)
    one_line_error(code, err, 2, *needles)
    assert files(tmp_path) == set() and files(base["data"]) == data_files
    assert all(p.read_bytes() == blob for p, blob in inputs.items())


@pytest.mark.parametrize("command", ["train", "compress"])
def test_existing_resume_file_needs_force(cli, base, tmp_path, command):
    """'<out>.last' is an output too: an unrelated file of that name is not replaced silently."""
    last = tmp_path / "m.pt.last"
    last.write_bytes(b"someone else's")
    argv = (["train", "--data", base["data"], "--arch", "tiny", "--img-size", IMG, "--epochs", 1]
            if command == "train" else ["compress", base["ckpt"], "--data", base["data"], *FAST_COMPRESS])
    code, _, err = cli(*argv, "--out", tmp_path / "m.pt")
    one_line_error(code, err, 2, "m.pt.last", "--force")
    assert last.read_bytes() == b"someone else's" and files(tmp_path) == {"m.pt.last"}


@pytest.mark.parametrize("target", ["fifo", "dev-null", "directory"])
@pytest.mark.parametrize("command", ["info", "eval"])
def test_special_file_as_output_is_refused_and_kept(cli, base, tmp_path, target, command):
    """Even with --force: a FIFO would block a writer forever; /dev/null must stay a device."""
    if target == "fifo":
        out = tmp_path / "pipe.json"
        os.mkfifo(out)
    elif target == "directory":
        out = tmp_path / "dir.json"
        out.mkdir()
    else:
        out = Path(os.devnull)
    data = ["--data", base["data"]] if command == "eval" else []
    code, _, err = cli(command, base["ckpt"], *data, "--json", out, "--force")
    one_line_error(code, err, 2, "--json", str(out))
    mode = os.stat(out).st_mode
    assert {"fifo": stat.S_ISFIFO, "dev-null": stat.S_ISCHR, "directory": stat.S_ISDIR}[target](mode)
    no_tmp(tmp_path)


def test_fifo_output_in_a_real_process_does_not_block(base, tmp_path):
    out = tmp_path / "pipe.json"
    os.mkfifo(out)
    code, _, err, _ = run_process("info", base["ckpt"], "--json", out, "--force", timeout=120)
    one_line_error(code, err, 2, "--json", "not a regular file")
    assert stat.S_ISFIFO(os.stat(out).st_mode)


# ---------------------------------------------------------------- numbers that are not numbers (class 7)

NUMBERS = [
    ("train", "--lr", "inf"), ("train", "--lr", "nan"), ("train", "--weight-decay", "nan"),
    ("train", "--momentum", "nan"), ("train", "--label-smoothing", "inf"), ("train", "--val-frac", "nan"),
    ("train", "--test-frac", "inf"), ("train", "--crop-scale", "nan"), ("train", "--seed", 2**70),
    ("train", "--seed", -1), ("train", "--img-size", 2**70), ("train", "--img-size", 4096),
    ("train", "--epochs", 2**70), ("train", "--batch-size", 2**70), ("train", "--workers", 2**70),
    ("compress", "--r1", "nan"), ("compress", "--r2", "inf"), ("compress", "--kd-temperature", "nan"),
    ("compress", "--kd-weight", "nan"), ("compress", "--ratio", "nan"), ("compress", "--target-macs", "inf"),
    ("compress", "--round-to", 2**70), ("compress", "--calib-images", 2**70), ("compress", "--seed", 2**70),
    ("compress", "--lr", "-inf"), ("compress", "--epochs", 2**70),
    ("export", "--atol", "inf"), ("export", "--rtol", "nan"), ("export", "--min-agreement", "nan"),
    ("export", "--int8-min-agreement", "inf"), ("export", "--parity-images", 2**70),
    ("export", "--batch-size", 2**70), ("export", "--calib-images", 2**70), ("export", "--opset", 2**70),
]


@pytest.mark.parametrize("command,flag,value", NUMBERS)
def test_numeric_option_is_checked_at_parse_time(cli, base, tmp_path, monkeypatch, command, flag, value):
    def no_work(*args, **kwargs):
        raise AssertionError("work started with an invalid number")

    import rtdeploy.cli.compress_cmd
    import rtdeploy.cli.export_cmd
    import rtdeploy.cli.train_cmd

    for module in (rtdeploy.cli.train_cmd, rtdeploy.cli.compress_cmd, rtdeploy.cli.export_cmd):
        for loader in ("load_data", "load_every_image"):
            if hasattr(module, loader):
                monkeypatch.setattr(module, loader, no_work)
    head = {"train": ["train", "--data", base["data"], "--arch", "tiny", "--out", tmp_path / "m.pt"],
            "compress": ["compress", base["ckpt"], "--data", base["data"], "--out", tmp_path / "p.pt"],
            "export": ["export", base["ckpt"], "--out", tmp_path / "m.onnx"]}[command]
    code, _, err = cli(*head, flag, value)
    line = one_line_error(code, err, 2, flag, fix=False)
    assert "must be" in line and "internal error" not in line
    assert files(tmp_path) == set()


@pytest.mark.parametrize("field,value,flag", [
    ("lr", float("inf"), "--lr"), ("weight_decay", float("nan"), "--weight-decay"), ("seed", 2**70, "--seed"),
    ("epochs", 2**70, "--epochs"), ("momentum", float("nan"), "--momentum"), ("batch_size", 1.5, "--batch-size"),
])
def test_train_config_refuses_non_numbers_for_library_callers(field, value, flag):
    from rtdeploy.errors import ConfigError
    from rtdeploy.train import TrainConfig

    with pytest.raises(ConfigError, match=flag):
        TrainConfig(**{field: value})


# ---------------------------------------------------------------- one line, always (class 9)

FORGED = "x\nrtdeploy: error: forged\r\x1b[2J"


@pytest.mark.parametrize("argv", [
    ["info", f"{{tmp}}/{FORGED}.pt"],
    ["train", "--arch", "tiny", "--out", f"{{tmp}}/{FORGED}/m.pt"],
    ["info", "{ckpt}", "--json", f"{{tmp}}/{FORGED}/i.json"],
    ["train", "--arch", FORGED, "--out", "{tmp}/m.pt"],
    ["train", "--epochs", f"1{FORGED}", "--out", "{tmp}/m.pt"],
    ["train", "--schedule", FORGED, "--out", "{tmp}/m.pt"],
    ["compress", "{ckpt}", "--loss", FORGED, "--out", "{tmp}/p.pt"],
])
def test_control_characters_never_split_the_error_line(cli, base, tmp_path, argv):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{ckpt}", str(base["ckpt"])) for a in argv]
    code, _, err = cli(*args)
    assert_escaped_one_line(code, err)


def assert_escaped_one_line(code: int, err: str) -> None:
    """One line; where the hostile value is echoed, its newline, CR and ESC are escaped."""
    assert err.count("\n") == 1 and err.endswith("\n") and "\r" not in err and "\x1b" not in err, repr(err)
    one_line_error(code, err, 2, fix=False)
    if "forged" in err:
        assert "\\n" in err and err.count("rtdeploy: error:") == 2 and err.startswith("rtdeploy: error:")


def test_control_characters_on_a_real_stderr(base, tmp_path):
    code, _, err, _ = run_process("info", tmp_path / f"{FORGED}.pt", timeout=120)
    assert_escaped_one_line(code, err)


def test_names_show_escapes_like_repr():
    from rtdeploy.names import show

    assert show("a\nb\tc\x1b\u2028\udcff é") == "a\\nb\\tc\\x1b\\u2028\\udcff é"
    assert show(Path("plain/name.pt")) == "plain/name.pt" and show(3) == "3"


def test_cli_flattens_any_message_to_one_line(cli, monkeypatch):
    from rtdeploy.errors import DataError

    def fail(*args, **kwargs):
        raise DataError("first line\nrtdeploy: error: second line")

    monkeypatch.setattr("rtdeploy.evaluation.describe_checkpoint", fail)
    code, _, err = cli("info", "whatever.pt")
    assert code == 2 and err == "rtdeploy: error: first line\\nrtdeploy: error: second line\n"


# ---------------------------------------------------------------- smaller ones (class 10)

def test_closed_stdout_is_one_line_not_a_traceback(base):
    code, _, err, _ = run_process("info", base["ckpt"], stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(1))
    one_line_error(code, err, 2, "standard output is closed")


def test_unwritable_stdout_is_one_line_not_a_traceback(base):
    with open(os.devnull) as read_only:  # writes fail with EBADF
        code, _, err, _ = run_process("info", base["ckpt"], stdout=read_only)
    one_line_error(code, err, 1, "standard output")


@pytest.mark.parametrize("kind,needle", [("directory", "is a directory"), ("onnx", "is an ONNX model"),
                                         ("fifo", "not a regular file"), ("legacy pickle", "pickled Python objects"),
                                         ("text", "not an rtdeploy checkpoint")])
def test_wrong_kind_of_file_as_checkpoint_says_what_it_is(cli, base, tmp_path, kind, needle):
    path = tmp_path / "model.pt"
    if kind == "directory":
        path.mkdir()
    elif kind == "onnx":
        path.write_bytes(base["onnx"].read_bytes())
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "legacy pickle":
        torch.save({"format": "rtdeploy-checkpoint"}, path, _use_new_zipfile_serialization=False)
    else:
        path.write_text("hello")
    code, _, err = cli("info", path)
    one_line_error(code, err, 2, "model.pt", needle)


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 64000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
])
def test_cpu_out_of_memory_is_the_out_of_memory_message(cli, base, monkeypatch, error):
    def oom(*args, **kwargs):
        raise error

    monkeypatch.setattr("rtdeploy.evaluation.count_macs_params", oom)
    code, _, err = cli("info", base["ckpt"])
    one_line_error(code, err, 1, "out of memory")
    assert "internal error" not in err


def _damaged_last(base, tmp_path, edit) -> Path:
    last = tmp_path / "m.pt.last"

    def apply(p, m):
        edit(p["state"])
    return craft(base["last"], last, apply)


@pytest.mark.parametrize("kind,edit,needle", [
    ("epoch a string", lambda s: s.__setitem__("epoch", "3"), "state.epoch"),
    ("epoch negative", lambda s: s.__setitem__("epoch", -1), "state.epoch"),
    ("optimizer missing groups", lambda s: s["optimizer"].__setitem__("param_groups", []), "param_groups"),
    ("momentum buffer misshaped", lambda s: s["optimizer"]["state"][0].__setitem__("momentum_buffer", torch.zeros(2)),
     "momentum_buffer"),
    ("report epochs not a list", lambda s: s["report"].__setitem__("epochs", 3), "state.report.epochs"),
    ("model weights of another net", lambda s: s.__setitem__("model", {"w": torch.zeros(1)}), "state.model"),
    ("lr a string", lambda s: s["optimizer"]["param_groups"][0].__setitem__("lr", "fast"), "lr"),
    ("no training state", lambda s: s.clear(), "holds no training state"),
])
def test_damaged_resume_state_is_refused_before_decoding(cli, base, tmp_path, monkeypatch, kind, edit, needle):
    def no_decoding(*args, **kwargs):
        raise AssertionError("images were decoded before --resume was checked")

    monkeypatch.setattr("rtdeploy.cli.train_cmd.load_data", no_decoding)
    last = _damaged_last(base, tmp_path, edit)
    code, _, err = cli("train", "--data", base["data"], "--arch", "tiny_se", "--img-size", IMG, "--epochs", 3,
                       "--batch-size", 8, "--out", tmp_path / "m.pt", "--resume", last)
    one_line_error(code, err, 2, "m.pt.last", needle)


@pytest.mark.parametrize("args,needle", [
    (["--resume", "{tmp}/missing.pt.last"], "does not exist"),
    (["--resume", "{last}", "--arch", "tiny"], "--arch"),
    (["--resume", "{last}", "--img-size", 32], "--img-size"),
    (["--resume", "{last}", "--epochs", 1], "--epochs"),
])
def test_resume_is_checked_before_any_image_is_decoded(cli, base, tmp_path, monkeypatch, args, needle):
    def no_decoding(*a, **k):
        raise AssertionError("images were decoded before --resume was checked")

    monkeypatch.setattr("rtdeploy.cli.train_cmd.load_data", no_decoding)
    args = [str(a).replace("{tmp}", str(tmp_path)).replace("{last}", str(base["last"])) for a in args]
    defaults = {"--arch": "tiny_se", "--img-size": IMG, "--epochs": 3}
    fill = [x for flag, v in defaults.items() if flag not in args for x in (flag, v)]
    code, _, err = cli("train", "--data", base["data"], *fill, *args, "--out", tmp_path / "m.pt")
    one_line_error(code, err, 2, needle)
    assert files(tmp_path) == set()


def test_an_error_after_decoding_started_is_still_the_only_line(cli, base, tmp_path):
    """No empty line left behind by a progress bar before the error (stderr is not a terminal)."""
    other = make_image_folder(tmp_path / "other", n_classes=3, per_class=8, size=24, class_names=["a", "b", "c"])
    code, _, err = cli("eval", base["ckpt"], "--data", other)
    assert err.startswith("rtdeploy: error:") and err.count("\n") == 1, repr(err)
    one_line_error(code, err, 2, "classes do not match")


def _compress_last(p, ctx_edit, state_edit):
    """A compress '<out>.last' built from a train '.last': fine-tuning state + stage context."""
    ctx = {"fold": None, "kept_reason": None, "prune": {"ratio": 0.5}, "accuracy": {"original": 0.5},
           "rows": [{"stage": "original", "params": 10, "macs": 100, "accuracy": 0.5}], "seconds": {"prune": 1.0}}
    ctx_edit(ctx)
    state_edit(p["state"])
    p["state"] = {"finetune": p["state"], "compress": ctx, "settings": "{}"}


@pytest.mark.parametrize("ctx_edit,state_edit,needle", [
    (lambda c: None, lambda s: s.__setitem__("epoch", "2"), "state.epoch"),
    (lambda c: c.__setitem__("rows", "none"), lambda s: None, "state.compress.rows"),
    (lambda c: c["prune"].__setitem__("ratio", "half"), lambda s: None, "state.compress.prune.ratio"),
])
def test_damaged_compress_resume_is_refused_before_decoding(cli, base, tmp_path, monkeypatch, ctx_edit, state_edit,
                                                            needle):
    def no_decoding(*a, **k):
        raise AssertionError("images were decoded before --resume was checked")

    monkeypatch.setattr("rtdeploy.cli.compress_cmd.load_data", no_decoding)
    last = craft(base["last"], tmp_path / "p.pt.last", lambda p, m: _compress_last(p, ctx_edit, state_edit))
    code, _, err = cli("compress", base["ckpt"], "--data", base["data"], *FAST_COMPRESS, "--out", tmp_path / "p.pt",
                       "--resume", last)
    one_line_error(code, err, 2, "p.pt.last", needle)


def test_an_intact_resume_file_passes_and_extra_report_numbers_are_allowed(base, tmp_path):
    """The check is strict on types, not on the loop's bookkeeping: a report that records one more
    number (as a later loop.py may) still resumes."""
    from rtdeploy.train import TrainConfig
    from rtdeploy.train.job import check_resume

    _, state = check_resume(base["last"], "tiny_se", TrainConfig(epochs=3), IMG)
    assert state["epoch"] == 1
    more = _damaged_last(base, tmp_path, lambda s: s["report"].update(peak_epoch=1, peak_accuracy=0.5))
    assert check_resume(more, "tiny_se", TrainConfig(epochs=3), IMG)[1]["report"]["peak_accuracy"] == 0.5


# ---------------------------------------------------------------- weights and names (hostile review)

def _set_weight(name, make):
    return lambda p, m: p["state_dict"].__setitem__(name, make(p["state_dict"][name]))


def _sparse_weight(p, m):
    p["state_dict"]["fc.weight"] = p["state_dict"]["fc.weight"].to_sparse()


WEIGHTS = {
    "NaN in a conv weight": (_set_weight("conv1.weight", lambda t: t.index_fill(0, torch.tensor([0]), float("nan"))),
                             ["conv1.weight", "NaN"]),
    "Inf in a bias": (_set_weight("fc.bias", lambda t: t.fill_(float("inf"))), ["fc.bias", "infinite"]),
    "running_var negative": (_set_weight("bn1.running_var", lambda t: -t.abs() - 1), ["bn1.running_var", "negative"]),
    "running_mean NaN": (_set_weight("bn1.running_mean", lambda t: t.fill_(float("nan"))), ["bn1.running_mean"]),
    "weight bool": (_set_weight("fc.weight", lambda t: t > 0), ["fc.weight", "bool"]),
    "weight complex": (_set_weight("fc.weight", lambda t: t.to(torch.complex64)), ["fc.weight", "complex64"]),
    "weight int32": (_set_weight("fc.weight", lambda t: t.to(torch.int32)), ["fc.weight", "int32"]),
    "weight float16": (_set_weight("conv1.weight", lambda t: t.half()), ["conv1.weight", "float16"]),
    "weight float64": (_set_weight("conv1.weight", lambda t: t.double()), ["conv1.weight", "float64"]),
    "num_batches_tracked float": (_set_weight("bn1.num_batches_tracked", lambda t: t.float()),
                                  ["bn1.num_batches_tracked", "int64"]),
    "sparse weight": (_sparse_weight, ["dense tensors"]),
}


@pytest.mark.parametrize("kind", list(WEIGHTS))
def test_unusable_weights_are_refused_on_load_naming_the_tensor(cli, base, tmp_path, kind):
    """NaN/Inf, negative variances, wrong dtypes and sparse layouts are refused with one line
    naming the tensor, not evaluated or converted (in-process; a real process below)."""
    edit, needles = WEIGHTS[kind]
    bad = craft(base["ckpt"], tmp_path / "bad.pt", edit)
    code, out, err = cli("info", bad)
    one_line_error(code, err, 2, "bad.pt", *needles)
    assert "internal error" not in err and "macs" not in out.lower()


# Each (kind, command) pair is checked; two of them in a real process (its stderr shows any torch
# warning printed before our line), the rest in-process through the same entry point, where a
# warning is recorded instead of printed (a real `python -m rtdeploy` costs ~8 s of imports).
@pytest.mark.parametrize("command", ["info", "eval"])
@pytest.mark.parametrize("kind", ["NaN in a conv weight", "weight bool", "running_var negative"])
def test_unusable_weights_are_refused_by_a_real_process(cli, base, tmp_path, kind, command):
    """Exactly one line on stderr (no torch warning before it); eval reads through the same check
    as info."""
    edit, needles = WEIGHTS[kind]
    bad = craft(base["ckpt"], tmp_path / "bad.pt", edit)
    tail = ["--data", base["data"]] if command == "eval" else []
    if (kind, command) in {("NaN in a conv weight", "info"), ("weight bool", "eval")}:
        code, out, err, _ = run_process(command, bad, *tail)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code, out, err = cli(command, bad, *tail)
        # What a real process prints by default (not the hidden deprecation/import/resource kinds).
        shown = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning,
                                                                   ImportWarning, ResourceWarning))]
        assert not shown, [str(w.message) for w in shown]
    one_line_error(code, err, 2, "bad.pt", *needles)
    assert len(err.strip().splitlines()) == 1, err
    assert "internal error" not in err and "accuracy" not in out.lower()


def test_export_refuses_nan_weights_before_the_parity_check(cli, base, tmp_path):
    bad = craft(base["ckpt"], tmp_path / "bad.pt", WEIGHTS["NaN in a conv weight"][0])
    code, _, err = cli("export", bad, "--out", tmp_path / "m.onnx")
    one_line_error(code, err, 2, "conv1.weight")
    assert "--atol" not in err and files(tmp_path) == {"bad.pt"}


@pytest.mark.parametrize("names", [["ok", "evil\nrtdeploy: error: forged", "c"], ["a\x1b[31m", "b", "c"],
                                   ["a", "b\r", "c"]])
def test_class_names_with_control_characters_are_refused_on_load(cli, base, tmp_path, names):
    """Like a data class folder with a newline (test_hostile_data), a checkpoint's class name with
    one is refused, so info/eval never print a forged line on stdout. In-process through the same
    entry point: control characters reach a real process's stderr in
    test_control_characters_on_a_real_stderr, and a damaged checkpoint field a real process in
    test_damaged_files_and_bad_numbers_in_a_real_process."""
    bad = craft(base["ckpt"], tmp_path / "bad.pt", _meta("classes", names))
    code, out, err = cli("info", bad)
    one_line_error(code, err, 2, "bad.pt", "meta.classes", "control characters")
    assert "forged" not in out and "\x1b" not in out + err


def test_too_many_class_names_says_so(cli, base, tmp_path):
    # In-process: meta.classes is refused by a real process above; this is about the message.
    names = [f"class_{i}" for i in range(100_000)]
    bad = craft(base["ckpt"], tmp_path / "bad.pt", _meta("classes", names))
    code, _, err = cli("info", bad)
    one_line_error(code, err, 2, "bad.pt", "meta.classes", "100000 names")
    assert "must be a string" not in err


def test_long_metadata_is_not_refused_as_not_a_string(cli, base, tmp_path):
    """A long meta string (a big dataset's split fingerprint) is valid: only its size is bounded.
    (A valid file, not a hostile one: in-process through the same entry point.)"""
    long_history = [{"stage": "note", "text": "x" * 4000}, {"stage": "note", "text": "y" * 4000}]
    ok = craft(base["ckpt"], tmp_path / "ok.pt", lambda p, m: m["history"].extend(long_history))
    code, out, err = cli("info", ok)
    assert code == 0, err


# ---------------------------------------------------------------- bench: foreign ONNX files (hostile review)

def _pooling_classifier(path: Path, hw: tuple[int, int], opset: int = 17) -> Path:
    """A valid ONNX classifier with no rtdeploy metadata: N x 3 x H x W -> global pool -> [N, 3]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, *hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                               helper.make_node("Flatten", ["p"], ["y"])], "pool", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_bench_refuses_a_huge_static_input_before_allocating(tmp_path):
    """1x3x30000x30000 would be ~10 GB per batch: refused by a real process that stays small."""
    model = _pooling_classifier(tmp_path / "huge.onnx", (30000, 30000))
    code, _, err, peak_mb = run_process("bench", model, *FAST_BENCH)
    one_line_error(code, err, 2, "huge.onnx", "30000")
    assert 0 < peak_mb < 1500, f"peak RSS {peak_mb} MB"


def test_bench_runs_a_small_foreign_onnx(cli, tmp_path):
    """The same graph at 32x32 is measured: the bound above refuses the size, not the kind of file.
    (The control case: in-process through the same entry point.)"""
    model = _pooling_classifier(tmp_path / "small.onnx", (32, 32))
    code, out, err = cli("bench", model, *FAST_BENCH)
    assert code == 0, err
    assert "small" in out


def test_bench_refuses_a_future_opset_at_load(cli, tmp_path):
    # In-process: foreign ONNX files reach bench through a real process in the two tests above.
    model = _pooling_classifier(tmp_path / "future.onnx", (32, 32), opset=99)
    code, _, err = cli("bench", model, *FAST_BENCH)
    one_line_error(code, err, 2, "future.onnx", "opset 99", "re-export")
    assert "internal error" not in err


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_bench_special_file_is_not_a_regular_file(tmp_path, kind):
    path = Path("/dev/zero") if kind == "dev-zero" else tmp_path / "fifo.pt"
    if kind == "fifo":
        os.mkfifo(path)
    code, _, err, _ = run_process("bench", path, *FAST_BENCH, timeout=60)
    one_line_error(code, err, 2, "not a regular file")
    assert "does not exist" not in err


def test_bench_out_of_memory_names_bench_flags(cli, base, monkeypatch):
    def oom(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr("rtdeploy.bench.models.describe", oom)
    code, _, err = cli("bench", base["onnx"], *FAST_BENCH)
    one_line_error(code, err, 1, "out of memory", "--batch-sizes")
    assert "--batch-size " not in err and "--img-size" not in err


@pytest.mark.parametrize("where", ["tensors", "layers", "state_dict"])
def test_a_huge_key_is_named_briefly(cli, base, tmp_path, where):
    """Review 3: a 100,000-character key was printed whole, a 100 KB error line."""
    key = "k" * 100_000

    def edit(p, m):
        if where == "tensors":
            m["structure"]["tensors"] = {key: [3]}
        elif where == "layers":
            m["structure"]["layers"][key] = {"type": "bn", "features": 3}
            p["state_dict"][f"{key}.weight"] = torch.ones(3)
        else:
            p["state_dict"][key] = torch.ones(3, dtype=torch.float16)
    bad = craft(base["ckpt"], tmp_path / "bad.pt", edit)
    code, _, err = cli("info", bad)
    line = one_line_error(code, err, 2, "bad.pt", "kkkk")
    assert len(line) < 1000, len(line)
