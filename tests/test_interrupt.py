"""Ctrl-C / SIGTERM during training leaves the last complete epoch loadable, and --resume
finishes with the same weights as an uninterrupted run (issue 5)."""
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import make_image_folder
from rtdeploy.checkpoint import load_checkpoint, read_checkpoint

pytestmark = pytest.mark.slow
EPOCHS = 12


def _default_sigint() -> None:
    # A suite started in the background (nohup, `&`, some CI runners) hands its children SIGINT
    # ignored, and Python then keeps it ignored; the test is about Ctrl-C in a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "rtdeploy", "train", "--data", str(data), "--arch", "tiny_se",
            "--img-size", "24", "--epochs", str(EPOCHS), "--batch-size", "4", "--seed", "3", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One generated folder for the module: every run below reads the same files."""
    return make_image_folder(tmp_path_factory.mktemp("interrupt-data"), n_classes=3, per_class=30, size=32)


@contextlib.contextmanager
def _one_thread():
    """One torch thread here, as in the real processes (OMP_NUM_THREADS=1), whatever an earlier
    test in this worker left set: 12 epochs on 2 threads ended 53x outside the tolerance below
    from the same run on 1 (float sums split differently), so the comparison must not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _in_process(cmd: list[str]) -> int:
    """The same command through the CLI's entry point in this process (one torch thread, as the
    real processes here: OMP_NUM_THREADS=1), for the uninterrupted references, which are only
    what the interrupted real processes are compared with."""
    from rtdeploy.cli.app import main

    with _one_thread():
        return main([str(a) for a in cmd[3:]])


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def straight_training(data, tmp_path_factory):
    """The uninterrupted reference: the SIGTERM and SIGINT cases share it (same data, same seed,
    same settings, so it is the same run; training it once per case only cost time)."""
    straight = tmp_path_factory.mktemp("interrupt-straight") / "straight.pt"
    assert _in_process(_train_cmd(data, straight)) == 0
    return straight


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_training_resumes_to_the_same_result(data, straight_training, tmp_path, sig):
    env = _env()
    interrupted = tmp_path / "cut.pt"
    proc = subprocess.Popen(_train_cmd(data, interrupted), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True, preexec_fn=_default_sigint)
    last = tmp_path / "cut.pt.last"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    _, _, state = read_checkpoint(last)  # the last complete epoch is whole and loadable
    done = state["epoch"]
    assert 1 <= done < EPOCHS
    load_checkpoint(interrupted)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no half-written files

    resumed = subprocess.run(_train_cmd(data, interrupted, "--resume", last), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    a, _ = load_checkpoint(straight_training)
    b, _ = load_checkpoint(interrupted)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5, msg=k)


def _compress_cmd(ckpt, data, out, *extra):
    return [sys.executable, "-m", "rtdeploy", "compress", str(ckpt), "--data", str(data), "--ratio", "0.5",
            "--round-to", "1", "--epochs", str(EPOCHS), "--batch-size", "4", "--out", str(out), *extra]


def test_interrupted_compress_resumes_to_the_same_result(cli, data, tmp_path):
    env = _env()
    base = tmp_path / "base.pt"
    # The model to compress is only input here: trained in-process (the real processes below are
    # the interrupted, resumed and uninterrupted compress runs this test is about).
    code, _, err = cli(*_train_cmd(data, base)[3:-4], "--epochs", "1", "--out", base)
    assert code == 0, err
    cut = tmp_path / "cut.pt"
    proc = subprocess.Popen(_compress_cmd(base, data, cut), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True, preexec_fn=_default_sigint)
    last = tmp_path / "cut.pt.last"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert not cut.exists()  # the pruned checkpoint is only written when fine-tuning is complete
    _, _, state = read_checkpoint(last)
    assert 1 <= state["finetune"]["epoch"] < EPOCHS

    resumed = subprocess.run(_compress_cmd(base, data, cut, "--resume", last), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    straight = tmp_path / "straight.pt"
    with _one_thread():
        code, _, err = cli(*_compress_cmd(base, data, straight)[3:])
    assert code == 0, err
    a, _ = load_checkpoint(straight)
    b, _ = load_checkpoint(cut)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5, msg=k)
    # Resuming with other settings is refused (exit 2, one line): the same entry point in-process.
    code, _, err = cli(*_compress_cmd(base, data, tmp_path / "x.pt", "--resume", last, "--loss", "ce")[3:])
    assert code == 2 and "other compress settings" in err, err
    assert not (tmp_path / "x.pt").exists()
    # A run stopped after its last epoch but while saving: its finished '.last' trains no more
    # and writes the same pruned model and a report again (the README's troubleshooting row).
    straight.unlink()
    straight.with_suffix(".json").unlink()
    with _one_thread():
        code, _, err = cli(*_compress_cmd(base, data, straight, "--resume", f"{straight}.last")[3:])
    assert code == 0, err
    c, _ = load_checkpoint(straight)
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values()):
        torch.testing.assert_close(va, vc, rtol=0, atol=0, msg=k)
    assert straight.with_suffix(".json").exists()
