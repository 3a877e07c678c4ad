"""Data-parallel train and compress under torchrun, 2 gloo processes on CPU, through the real CLI
(issue 14): the ranks end with identical weights, the result matches one process with the same
global batch and seed, --resume works, and a signal or a death on one rank ends the job with one
line and the last complete checkpoint intact.

Tolerance: the two runs do the same arithmetic except for the order of float sums (BatchNorm
statistics summed over two ranks, gradients averaged by all-reduce). That rounding drifts as
training goes on: weights agree to ~2e-7 after 3 epochs (15 steps) and to ~1.3e-5 (on weights of
magnitude ~0.5) after 8 epochs (40 steps) at lr 0.05. We allow rtol 1e-3 / atol 1e-4; a real
mismatch (a shard missing, BatchNorm on half batches, a wrong loss weight) moves weights by 1e-2+.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rtdeploy.checkpoint import load_checkpoint, read_checkpoint
from rtdeploy.distributed import state_digest

pytestmark = pytest.mark.slow
TIMEOUT = 300
# 3 classes x 20 images: 42 train images, so a global batch of 9 leaves batches of 9 (5 + 4 per
# rank) and a trailing 6 (3 + 3): uneven shards are part of what must match.
TRAIN = ["--arch", "tiny_se", "--img-size", "24", "--batch-size", "9", "--seed", "3"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_port()),
            "-m", "rtdeploy", *map(str, args)]


def single(*args) -> list[str]:
    return [sys.executable, "-m", "rtdeploy", *map(str, args)]


def run(cmd, **env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), timeout=TIMEOUT)


def assert_same_weights(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=lambda m: f"{k}: {m}")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rtdeploy: error:")]


def assert_no_rtdeploy_traceback(stderr: str) -> None:
    # torchrun prints its own failure summary (with a traceback of torchrun itself); no frame of
    # rtdeploy may appear, i.e. no rank crashed with an unhandled exception.
    assert "/rtdeploy/" not in stderr and "[rank0]" not in stderr and "[rank1]" not in stderr, stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from conftest import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("ddp") / "data", n_classes=3, per_class=20, size=32)


STRAIGHT_EPOCHS = 8


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    """One uninterrupted one-process training run: the reference the SIGTERM + --resume case must
    match, and the model the compress case prunes (one training process for both)."""
    out = tmp_path_factory.mktemp("straight") / "straight.pt"
    r = run(single("train", "--data", data, *TRAIN, "--epochs", STRAIGHT_EPOCHS, "--out", out))
    assert r.returncode == 0, r.stderr
    return out


def test_ddp_compress_with_distillation_matches_one_process(data, straight, tmp_path):
    base = straight
    args = ["--data", data, "--ratio", "0.5", "--round-to", "1", "--epochs", "2", "--batch-size", "9",
            "--distill", "--calib-images", "20"]
    two, one = tmp_path / "two.pt", tmp_path / "one.pt"
    r2 = run(torchrun("compress", base, *args, "--out", two))
    assert r2.returncode == 0, r2.stderr
    r1 = run(single("compress", base, *args, "--out", one))
    assert r1.returncode == 0, r1.stderr
    a, b = load_checkpoint(two)[0], load_checkpoint(one)[0]
    assert_same_weights(a.state_dict(), b.state_dict())
    rep2, rep1 = (json.loads(p.with_suffix(".json").read_text()) for p in (two, one))
    assert rep2["distributed"]["world_size"] == 2 and rep2["distributed"]["backend"] == "gloo"
    assert rep2["distributed"]["rank_digests"] == [state_digest(a)] * 2
    assert rep2["accuracy"] == rep1["accuracy"] and rep2["macs"] == rep1["macs"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def _rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (read from their environment)."""
    kids = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    out = {}
    for pid in map(int, kids):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        out[int(next(e for e in env if e.startswith(b"RANK="))[5:])] = pid
    return out


def _start_and_hit_rank(cmd, last: Path, rank: int, sig) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + TIMEOUT
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its first epoch was saved"
    os.kill(_rank_pids(proc)[rank], sig)
    _, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, err


def test_sigterm_to_one_rank_then_resume_matches_one_process(data, straight, tmp_path):
    """SIGTERM to rank 1 mid-run stops both ranks at the same step with one line; --resume under
    torchrun then finishes with the weights of an uninterrupted one-process run (`straight`)."""
    epochs = STRAIGHT_EPOCHS
    cut = tmp_path / "cut.pt"
    last = Path(f"{cut}.last")
    code, err = _start_and_hit_rank(torchrun("train", "--data", data, *TRAIN, "--epochs", epochs, "--out", cut),
                                    last, 1, signal.SIGTERM)
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0], err
    assert_no_rtdeploy_traceback(err)
    done = read_checkpoint(last)[2]["epoch"]  # whole and loadable
    assert 1 <= done < epochs
    load_checkpoint(cut)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing half-written

    resumed = run(torchrun("train", "--data", data, *TRAIN, "--epochs", epochs, "--out", cut, "--resume", last))
    assert resumed.returncode == 0, resumed.stderr
    assert not error_lines(resumed.stderr) and resumed.stdout.count("rtdeploy train") == 1  # rank 0 alone prints
    two, one = load_checkpoint(cut)[0], load_checkpoint(straight)[0]
    assert_same_weights(two.state_dict(), one.state_dict())
    # The final epoch's weights too (the best epoch may be an early one).
    assert_same_weights(read_checkpoint(last)[2]["model"], read_checkpoint(f"{straight}.last")[2]["model"])
    summary, alone = (json.loads(p.with_suffix(".json").read_text()) for p in (cut, straight))
    assert summary["resumed_from_epoch"] == done
    dist = summary["distributed"]
    assert dist["world_size"] == 2 and dist["backend"] == "gloo" and dist["global_batch"] == 9
    assert dist["rank_digests"] == [state_digest(two)] * 2  # every rank held what rank 0 saved
    assert alone["distributed"]["world_size"] == 1 and alone["distributed"]["backend"] is None
    # Accuracy over the whole eval split on both (not one shard), epoch by epoch.
    assert [e["eval_accuracy"] for e in summary["epochs"]] == [e["eval_accuracy"] for e in alone["epochs"]]


def test_a_rank_that_dies_ends_the_job_with_one_line(data, tmp_path):
    cut = tmp_path / "cut.pt"
    last = Path(f"{cut}.last")
    code, err = _start_and_hit_rank(torchrun("train", "--data", data, *TRAIN, "--epochs", 30, "--out", cut),
                                    last, 1, signal.SIGKILL)
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1 and "another process" in lines[0] and "--resume" in lines[0], err
    assert_no_rtdeploy_traceback(err)
    assert 1 <= read_checkpoint(last)[2]["epoch"] < 30
    load_checkpoint(cut)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unavailable_backend_is_one_line(data, tmp_path):
    out = tmp_path / "x.pt"
    r = run(torchrun("train", "--data", data, *TRAIN, "--epochs", "1", "--out", out), RTDEPLOY_DIST_BACKEND="nccl")
    assert r.returncode != 0
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "RTDEPLOY_DIST_BACKEND=nccl" in lines[0] and "gloo" in lines[0], r.stderr
    assert_no_rtdeploy_traceback(r.stderr)
    assert not list(tmp_path.iterdir())


def test_ranks_that_see_different_data_fail_on_every_rank(tmp_path):
    """Each rank loads its own folder (as on two nodes with unequal copies): the file-list hash
    differs, and every rank raises the same DataError instead of training on mismatched data."""
    from conftest import make_image_folder

    for rank, per_class in ((0, 6), (1, 7)):
        make_image_folder(tmp_path / f"data{rank}", n_classes=2, per_class=per_class, size=16)
    script = tmp_path / "load.py"
    script.write_text(
        "import os, sys\n"
        "from rtdeploy.distributed import setup\n"
        "from rtdeploy.data import load_splits\n"
        "from rtdeploy.errors import DataError\n"
        "setup('cpu')\n"
        f"root = {str(tmp_path)!r} + '/data' + os.environ['RANK']\n"
        "try:\n"
        "    load_splits(root, img_size=16)\n"
        "except DataError as e:\n"
        f"    open({str(tmp_path)!r} + '/said' + os.environ['RANK'], 'w').write(str(e))\n"
        "    sys.exit(2)\n")
    for attempt in range(2):  # one retry with a fresh port: a rendezvous port taken between _port() and use
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_port()),
               str(script)]
        for f in tmp_path.glob("said*"):
            f.unlink()
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
        # each rank writes its own file: two processes printing to one pipe interleave their lines
        said = [f.read_text() for f in sorted(tmp_path.glob("said*"))]
        if len(said) == 2:
            break
    assert r.returncode != 0
    assert len(said) == 2 and all("rank 1's image files differ from rank 0's" in s for s in said), r.stdout + r.stderr


def test_an_interrupted_rank_names_both_causes(monkeypatch):
    """Which reaches a surviving rank first, torchrun's SIGTERM after a peer died or the peer's
    broken collective, is a race (the rank-dies test above met both): under torchrun the interrupt
    line names both causes and still offers --resume for train/compress."""
    from rtdeploy.cli import app

    monkeypatch.setattr(app, "_command", "train")
    monkeypatch.setenv("WORLD_SIZE", "2")
    line = app._interrupted()
    assert "interrupted" in line and "another process" in line and "--resume" in line
    for alone in ("1", "", "abc"):  # one process, or a damaged variable: the plain line
        monkeypatch.setenv("WORLD_SIZE", alone)
        assert app._interrupted() == app.INTERRUPTED
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(app, "_command", "export")
    assert "--resume" not in app._interrupted()
