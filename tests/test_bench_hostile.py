"""Hostile and mistaken bench inputs through the real CLI (issue 10, classes 8 and 10): settings
that would hang, models that fail only at measurement, metadata that would be reported under flags
bench does not have, and the interrupt message."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from rtdeploy.export import ExportConfig, export_checkpoint

from test_export import make_checkpoint

BENCH_FLAGS = {"--provider", "--batch-sizes", "--threads", "--warmup", "--runs", "--seconds", "--rounds", "--timeout",
               "--cpus", "--fp16", "--data", "--data-root", "--torch", "--graph-opt", "--isolate", "--in-process",
               "--json", "--markdown", "--plot", "--force"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile-bench")
    out = d / "m.onnx"
    export_checkpoint(make_checkpoint(d / "m.pt"), out, ExportConfig(exporter="torchscript"))
    return out


def _one_line(code: int, err: str, expected_code: int, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == expected_code and len(lines) == 1 and lines[0].startswith("rtdeploy: error:"), (code, err)
    for n in needles:
        assert n in lines[0], (n, lines[0])
    flags = {w.rstrip(",;:.)") for w in lines[0].split() if w.startswith("--")}
    assert flags <= BENCH_FLAGS, f"names flags bench does not have: {flags - BENCH_FLAGS}"
    return lines[0]


@pytest.mark.parametrize("args,flag", [
    (["--seconds", "inf"], "--seconds"), (["--seconds", "nan"], "--seconds"), (["--seconds", "1e9"], "--seconds"),
    (["--threads", "10000"], "--threads"), (["--runs", "99999999999"], "--runs"), (["--rounds", "0"], "--rounds"),
    (["--timeout", "inf"], "--timeout"), (["--batch-sizes", "100000"], "--batch-sizes"), (["--cpus", "4096"], "--cpus"),
    (["--cpus", "x"], "--cpus"), (["--fp16"], "--fp16"), (["--warmup", "-1"], "--warmup"),
])
def test_settings_that_would_hang_are_refused(cli, model, args, flag):
    code, _, err = cli("bench", model, *args)
    _one_line(code, err, 2, flag)


def _edited(model: Path, tmp: Path, name: str, edit) -> Path:
    m = onnx.load(str(model))
    edit(m)
    out = tmp / name
    onnx.save(m, str(out))
    return out


def _set_prop(key: str, value: str):
    def edit(m):
        for p in m.metadata_props:
            if p.key == key:
                p.value = value
    return edit


def _custom_op(m):
    node = m.graph.node[-1]
    out = node.output[0]
    node.output[0] = "pre_custom"
    m.graph.node.append(helper.make_node("Frobnicate", ["pre_custom"], [out], domain="com.example.custom"))
    m.opset_import.append(helper.make_opsetid("com.example.custom", 1))


def _batch_zero(m):
    m.graph.input[0].type.tensor_type.shape.dim[0].ClearField("dim_param")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0


@pytest.mark.parametrize("case,edit,needles", [
    ("custom-op", _custom_op, ["'Frobnicate'", "com.example.custom"]),
    ("batch-0", _batch_zero, ["static batch of 0"]),
    ("img-size-huge", _set_prop("rtdeploy.img_size", "100000"), ["rtdeploy.img_size"]),
])
def test_models_that_would_fail_later_are_refused_at_load(cli, model, tmp_path, case, edit, needles):
    path = _edited(model, tmp_path, f"{case}.onnx", edit)
    code, _, err = cli("bench", path, "--runs", "1", "--rounds", "1", "--data", "sample")
    line = _one_line(code, err, 2, *needles)
    assert "--batch-sizes 0" not in line


@pytest.mark.parametrize("key,value", [("rtdeploy.mean", '["a", "b", "c"]'), ("rtdeploy.std", "[0, 0, 0]"),
                                       ("rtdeploy.mean", "[1, 2]")])
def test_bad_metadata_is_named_as_metadata_not_as_a_flag(cli, model, tmp_path, key, value):
    path = _edited(model, tmp_path, "meta.onnx", _set_prop(key, value))
    code, _, err = cli("bench", path, "--runs", "1", "--rounds", "1", "--data", "sample")
    line = _one_line(code, err, 2, "metadata")
    assert "--mean" not in line and "--std" not in line and "--img-size" not in line


def test_interrupt_ends_in_one_line_without_resume(model):
    """SIGTERM while a measurement runs: exit 130, one line, no mention of --resume (bench has none)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rtdeploy", "bench", str(model), "--seconds", "500",
                             "--rounds", "1", "--timeout", "600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not _has_worker(proc.pid):
        time.sleep(0.2)
    assert _has_worker(proc.pid), "the measuring worker never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    line = _one_line(proc.returncode, err, 130, "interrupted", "no results were written")
    assert "--resume" not in line


def _has_worker(pid: int) -> bool:
    """Whether `pid` has a child process running the bench worker (scanning /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and b"rtdeploy.bench.worker" in (stat.parent / "cmdline").read_bytes():
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False
