"""Issue 10, hostile data folders, through the real `rtdeploy` CLI.

Special files (FIFOs, sockets), symbolic links (loops, '..', dangling, leading out of the class or
the data folder, repeats), decoders raising odd exception types (plus a seeded, time-bounded
decoder fuzz test), decompression bombs, control characters in names, and the split fingerprint
that stops eval/compress/export/bench from measuring on a split other than the training one.

One case of each kind that used to hang (FIFO, link loop, class folder linked to '.') runs in a
subprocess with a timeout, so a regression fails instead of stopping the suite; the others run
the same entry point in-process (the `cli` fixture) to keep the suite fast. The symlink rule itself is documented in rtdeploy/scan.py.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image, make_image_folder
from rtdeploy import data as rdata
from rtdeploy.checkpoint import read_checkpoint, save_checkpoint, load_checkpoint
from rtdeploy.data import load_splits
from rtdeploy.export import read_metadata

IMG = 16
FAST_TRAIN = ("--arch", "tiny", "--img-size", IMG, "--epochs", 1, "--batch-size", 8)
TIMEOUT = 240  # generous for a shared 2-core machine; a hang is infinitely longer


# ---------------------------------------------------------------- helpers

def run_cli(*args, timeout: int = TIMEOUT) -> tuple[int, str, str]:
    """The real CLI in its own process: (exit code, stdout, stderr)."""
    env = {**os.environ, "RTDEPLOY_DEBUG": "", "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-m", "rtdeploy", *map(str, args)], capture_output=True,
                          timeout=timeout, env=env)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def one_error_line(code: int, err: str, *needles: str) -> str:
    """Exit 2 and stderr that is exactly one `rtdeploy: error:` line (no blank line before it)."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.split("\n")
    assert len(lines) == 2 and lines[1] == "" and lines[0].startswith("rtdeploy: error: "), repr(err)
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def summary_images(out: Path) -> int:
    return sum(json.loads(out.with_suffix(".json").read_text())["split"].values())


def train(data: Path, out: Path, *extra) -> tuple[int, str, str]:
    return run_cli("train", "--data", data, *FAST_TRAIN, "--out", out, *extra)


def skipped_counts(err: str) -> dict[str, int]:
    """The scan's 'skipped N data folder entries: ...' line as {reason: count}."""
    line = next(line for line in err.splitlines() if line.startswith("skipped ") and "data folder entries" in line)
    parts = [re.fullmatch(r"(\d+) (.+?) \(e\.g\. .*\)", p) for p in line.split(": ", 1)[1].split("; ")]
    return {m.group(2): int(m.group(1)) for m in parts}


# ---------------------------------------------------------------- 1. special files

def _add_special_files(data: Path) -> None:
    """Two FIFOs and a UNIX socket named like images (opening a FIFO for reading blocks until a
    writer comes: the run used to hang there, deaf to SIGTERM)."""
    os.mkfifo(data / "class_0" / "x.jpg")
    os.mkfifo(data / "class_1" / "y.png")
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    try:
        os.chdir(data / "class_1")  # a relative name: AF_UNIX paths are limited to ~108 bytes
        sock.bind("z.webp")
    finally:
        os.chdir(cwd)
        sock.close()  # the socket file stays


def test_a_fifo_swapped_in_after_the_scan_is_not_opened_for_reading(tmp_path):
    """The decoder opens non-blocking and checks fstat: a FIFO never blocks it."""
    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)
    result = []
    worker = threading.Thread(target=lambda: result.append(rdata._decode_file(str(fifo), IMG)), daemon=True)
    worker.start()
    worker.join(20)
    assert result and isinstance(result[0], str) and "not a regular file" in result[0]


# ---------------------------------------------------------------- 2. symbolic links

def _linked_folder(tmp_path: Path) -> Path:
    data = make_image_folder(tmp_path / "data", n_classes=2, per_class=6, size=24)
    outside = make_image_folder(tmp_path / "outside", n_classes=1, per_class=3, size=24) / "class_0"
    c0, c1 = data / "class_0", data / "class_1"
    (c1 / "sub").mkdir()
    make_image((50, 60, 220), 24, seed=99).save(c1 / "sub" / "extra.png")
    links = {c0 / "here1": ".", c0 / "here2": ".", c0 / "up": "..", c0 / "dangling.png": "missing.png",
             c0 / "loop.png": "loop.png", c0 / "outside": str(outside), c0 / "outside.png": str(outside / "class_0_0.png"),
             c0 / "cross.png": "../class_1/class_1_0.png", c1 / "dup.png": "class_1_1.png", c1 / "sub_again": "sub"}
    for link, target in links.items():
        os.symlink(target, link)
    os.link(c1 / "class_1_2.png", c1 / "hard.png")
    return data


def test_special_files_and_links_are_skipped_counted_and_never_read(tmp_path):
    """Classes 1 and 2 in one real process (each used to hang it): FIFOs and a socket, two links
    to '.', a link to '..', dangling and looping links, links out of the class and out of the
    data folder, a link and a hard link to files already used, a second link to a sub-folder."""
    data = _linked_folder(tmp_path)
    _add_special_files(data)
    code, _, err = train(data, tmp_path / "m.pt")
    assert code == 0, err
    assert skipped_counts(err) == {"broken link": 2, "link leading out of its class folder": 4,
                                   "not a regular file (FIFO, socket or device)": 3,
                                   "second path to a folder or file already used (link or hard link)": 5}
    assert summary_images(tmp_path / "m.pt") == 13  # 6 + 6 + sub/extra.png, each once
    assert stat.S_ISFIFO(os.stat(data / "class_0" / "x.jpg").st_mode)  # untouched


def test_links_never_relabel_or_repeat_an_image(tmp_path):
    data = _linked_folder(tmp_path)
    splits = load_splits(str(data), img_size=IMG)
    for ds in (splits.train, splits.test):
        for path, label in zip(ds.paths, ds.labels.tolist()):  # every image under its real class
            real = Path(os.path.realpath(path))
            assert real.is_relative_to(data / splits.classes[label]), (path, label)
    used = [os.path.realpath(p) for p in splits.train.paths + splits.test.paths]
    assert len(used) == len(set(used)) == 13
    assert any(p.endswith("/class_0/up") for p in splits.scan.skipped["outside"])  # the link to '..'


@pytest.mark.parametrize("target,needle,process", [
    (".", "link to the data folder or above it", True),  # looped forever: its own process
    ("..", "link to the data folder or above it", False),
    ("class_0", "the same folder as class folder", False),
    ("class_0/sub", "inside class folder", False),
])
def test_class_folder_links_that_make_labels_ambiguous_are_refused(cli, tmp_path, target, needle, process):
    data = make_image_folder(tmp_path / "data", n_classes=2, per_class=6, size=24)
    (data / "class_0" / "sub").mkdir()
    make_image((1, 2, 3), 24).save(data / "class_0" / "sub" / "s.png")
    os.symlink(target, data / "class_2")
    args = ("train", "--data", data, *FAST_TRAIN, "--out", tmp_path / "m.pt")
    code, _, err = run_cli(*args) if process else cli(*args)
    one_error_line(code, err, "class_2", needle, "remove the link")
    assert not (tmp_path / "m.pt").exists()


def test_class_folder_may_link_to_a_folder_elsewhere(tmp_path):
    """How a subset of a big dataset is assembled without copying: allowed and labelled by name."""
    data = make_image_folder(tmp_path / "data", n_classes=2, per_class=6, size=24)
    elsewhere = make_image_folder(tmp_path / "big", n_classes=3, per_class=6, size=24) / "class_2"
    os.symlink(elsewhere, data / "forest")
    splits = load_splits(str(data), img_size=IMG)
    assert splits.classes == ["class_0", "class_1", "forest"]
    assert (splits.train.labels == 2).sum() + (splits.test.labels == 2).sum() == 6


# ---------------------------------------------------------------- 3. decoders

def _odd_strip_offsets_tiff() -> bytes:
    """A TIFF whose StripOffsets tag is typed RATIONAL: Pillow raises TypeError on load."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "TIFF")
    blob = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", blob, 4)[0]
    for i in range(struct.unpack_from("<H", blob, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", blob, entry)[0] == 273:
            struct.pack_into("<H", blob, entry + 2, 5)
    return bytes(blob)


def _unknown_dds() -> bytes:
    """A DDS file with an unknown FourCC pixel format: Pillow raises NotImplementedError."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "DDS")
    blob = bytearray(buf.getvalue())
    blob[80:84] = struct.pack("<I", 4)  # DDPF_FOURCC
    blob[84:88] = b"XYZ1"
    return bytes(blob)


def test_odd_decoder_exceptions_are_bad_images(cli, tmp_path):
    data = make_image_folder(tmp_path / "data", n_classes=2, per_class=6, size=24)
    (data / "class_0" / "odd.tif").write_bytes(_odd_strip_offsets_tiff())
    (data / "class_1" / "dds.png").write_bytes(_unknown_dds())
    assert "TypeError" in rdata._decode_file(str(data / "class_0" / "odd.tif"), IMG)
    assert "NotImplementedError" in rdata._decode_file(str(data / "class_1" / "dds.png"), IMG)
    args = ("train", "--data", data, *FAST_TRAIN, "--out", tmp_path / "m.pt")
    code, _, err = run_cli(*args)  # class 3 through a real process; the skip case in-process
    one_error_line(code, err, "odd.tif", "not a readable image", "TypeError", "--skip-bad-images")
    code, _, err = cli(*args, "--skip-bad-images")
    assert code == 0, err
    assert "skipped 2 unreadable image(s)" in err
    assert summary_images(tmp_path / "m.pt") == 12


_FUZZ = r'''
import io, json, random, sys, time
import numpy as np, torch
from PIL import Image
from rtdeploy.data import _decode_file
from rtdeploy.env import peak_rss_mb
seed, budget, folder = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
rng = random.Random(seed)
base = np.random.RandomState(seed).randint(0, 256, (24, 24, 3)).astype(np.uint8)
seeds = {}
for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp")):
    buf = io.BytesIO(); Image.fromarray(base).save(buf, fmt); seeds[ext] = buf.getvalue()

def mutate(blob):
    b = bytearray(blob)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and b:                      # flip bytes
            for _ in range(rng.randint(1, 8)): b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and len(b) > 8:           # truncate
            del b[rng.randrange(8, len(b)):]
        elif op == 2 and len(b) > 16:          # extreme integers in the header (sizes, offsets, counts)
            at = rng.randrange(min(len(b) - 4, 128)); b[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x01\x00\x00"])
        elif op == 3 and len(b) > 16:          # duplicate a chunk
            at = rng.randrange(len(b)); b[at:at] = b[at:at + rng.randint(1, 64)]
        elif op == 4 and len(b) > 16:          # delete a chunk
            at = rng.randrange(len(b)); del b[at:at + rng.randint(1, 32)]
    return bytes(b)

counts = {"ok": 0, "bad": 0}; kinds = {}
_decode_file(sys.executable, 16)  # imports settled: what follows is the decoders' own growth
rss0 = peak_rss_mb()
start = time.monotonic(); i = 0
while time.monotonic() - start < budget:
    ext = rng.choice(sorted(seeds)); path = f"{folder}/f{i % 8}.{ext}"; i += 1
    with open(path, "wb") as fh: fh.write(mutate(seeds[ext]))
    out = _decode_file(path, 16)   # anything escaping here fails the test (non-zero exit)
    if isinstance(out, torch.Tensor):
        assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 16, 16), out.shape
        counts["ok"] += 1
    else:
        assert isinstance(out, str) and out.isprintable() and out, repr(out)
        counts["bad"] += 1; kind = out.split(":")[0] if ":" in out else "text"; kinds[kind] = kinds.get(kind, 0) + 1
print(json.dumps({**counts, "files": i, "kinds": kinds,
                  "grown_mb": peak_rss_mb() - rss0}))
'''


def test_decoder_fuzz_every_outcome_is_an_image_or_a_bad_image(tmp_path):
    """Seeded byte mutations of valid png/jpg/webp/tif/bmp files, for a fixed time budget.

    Runs in its own process: an exception escaping _decode_file, a crash in a C decoder or a
    hang (past the timeout) all fail the test; so does a mutated header that grows RSS by > 1 GB."""
    budget = float(os.environ.get("RTDEPLOY_FUZZ_SECONDS", "8"))
    proc = subprocess.run([sys.executable, "-c", _FUZZ, "1234", str(budget), str(tmp_path)],
                          capture_output=True, text=True, timeout=budget + 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""  # no decoder warning or log line of its own: one bad-image line is all
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["files"] >= 50, result  # it really fuzzed
    assert result["ok"] > 0 and result["bad"] > 0, result  # both outcomes were reached
    assert result["grown_mb"] < 1024, result  # torch alone is ~700 MB: the growth is what tells


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png(side: int = 9000) -> bytes:
    """A ~160 KB 16-bit grey PNG declaring side x side pixels (81 MP, below Pillow's own bomb
    limit): decoding and widening it takes over 1 GB."""
    row = b"\0" * (1 + 2 * side)  # filter byte + 16-bit zeros
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


_BOMB_RSS = r'''
import sys
from rtdeploy import data, imagefile
from rtdeploy.env import peak_rss_mb
if len(sys.argv) > 2:
    imagefile.MAX_IMAGE_PIXELS = int(sys.argv[2])
before = peak_rss_mb()
out = data._decode_file(sys.argv[1], 16)
grown = peak_rss_mb() - before
print(type(out).__name__, round(grown))
'''


def bomb_growth_mb(path: Path, *limit: int) -> tuple[str, int]:
    """(result type, peak RSS growth in MB) of decoding `path` in a fresh process (torch alone
    already takes ~700 MB of RSS, so the growth is what tells)."""
    proc = subprocess.run([sys.executable, "-c", _BOMB_RSS, str(path), *map(str, limit)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kind, grown = proc.stdout.split()
    return kind, int(grown)


def test_decompression_bomb_is_refused_from_its_header(cli, tmp_path):
    data = make_image_folder(tmp_path / "data", n_classes=2, per_class=6, size=24)
    bomb = data / "class_0" / "bomb.png"
    bomb.write_bytes(_bomb_png())
    assert bomb.stat().st_size < 1_000_000
    kind, grown = bomb_growth_mb(bomb)  # refused from its header (with the limit lifted it decodes: ~1.8 GB)
    assert kind == "str" and grown < 100, (kind, grown)
    code, _, err = cli("train", "--data", data, *FAST_TRAIN, "--out", tmp_path / "m.pt")
    one_error_line(code, err, "bomb.png", "9000x9000 pixels", "megapixel limit")
    assert not (tmp_path / "m.pt").exists()


# ---------------------------------------------------------------- 9. control characters

def test_class_folder_with_a_newline_is_refused_on_one_line(cli, tmp_path):
    data = make_image_folder(tmp_path / "data", n_classes=2, per_class=6, size=24,
                             class_names=["ok", "evil\nrtdeploy: error: forged"])
    code, _, err = cli("train", "--data", data, *FAST_TRAIN, "--out", tmp_path / "m.pt")
    one_error_line(code, err, "evil\\nrtdeploy: error: forged", "rename the folder")


def test_control_characters_in_image_names_stay_on_one_line(cli, tmp_path):
    """Also: decoding had started (class_0 decodes first), and still no blank line precedes the
    error (the decode bar is not drawn on a pipe)."""
    data = make_image_folder(tmp_path / "data", n_classes=2, per_class=6, size=24)
    truncated = (data / "class_0" / "class_0_0.png").read_bytes()[:60]
    c1 = os.fsencode(data / "class_1")
    for name in (b"a\nrtdeploy: error: forged.png", b"b\x1b[31mred\r.png", b"c\xff\xfe.png"):
        with open(c1 + b"/" + name, "wb") as fh:
            fh.write(truncated)
    make_image((50, 60, 220), 24, seed=7).save(data / "class_1" / "good\nname.png")  # fine: used
    code, _, err = train(data, tmp_path / "m.pt")
    one_error_line(code, err, "a\\nrtdeploy: error: forged.png", "--skip-bad-images")
    assert "\x1b" not in err and "\r" not in err
    code, _, err = cli("train", "--data", data, *FAST_TRAIN, "--out", tmp_path / "m.pt", "--skip-bad-images")
    assert code == 0, err
    assert not any(line.startswith("rtdeploy:") for line in err.splitlines())  # nothing forged
    assert "skipped 3 unreadable image(s), e.g. " in err
    assert "a\\nrtdeploy:error:forged.png" in "".join(err.split())  # escaped (rich may wrap the note)
    assert summary_images(tmp_path / "m.pt") == 13  # 'good\nname.png' was used


def test_undecodable_byte_in_a_name_is_escaped():
    from rtdeploy.names import show

    name = os.fsdecode(b"/data/c\xff.png")
    message = str(rdata._bad_image_error(name, "bad\x1b[0m\nreason"))
    assert "c\\udcff.png" in message and "bad\\x1b[0m\\nreason" in message
    message.encode("utf-8")  # printable to any UTF-8 stream: no lone surrogate left
    assert show("plain é/b c.jpg") == "plain é/b c.jpg" and show(Path("a\tb")) == "a\\tb"
    assert show(os.fsdecode(b"x\xff")) == "x\\udcff" and show("\u2028") == "\\u2028"


# ---------------------------------------------------------------- 11. split fingerprint

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder, a tiny checkpoint trained on it (through the CLI) and its ONNX export."""
    from rtdeploy.cli.app import main

    root = tmp_path_factory.mktemp("fp")
    data = make_image_folder(root / "data", n_classes=3, per_class=8, size=24)
    ckpt, onnx_path = root / "m.pt", root / "m.onnx"
    assert main([str(a) for a in ("train", "--data", data, *FAST_TRAIN, "--out", ckpt)]) == 0
    assert main(["export", str(ckpt), "--out", str(onnx_path)]) == 0
    return {"data": data, "ckpt": ckpt, "onnx": onnx_path}


def _copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained["data"], tmp_path / "moved_data"))


def test_fingerprint_is_recorded_in_checkpoint_and_onnx(trained):
    meta, _, _ = read_checkpoint(trained["ckpt"])
    assert meta.split_fingerprint and meta.split_fingerprint.startswith("fp1 ")
    assert read_metadata(trained["onnx"]).split["fingerprint"] == meta.split_fingerprint
    from rtdeploy.evaluation import split_settings

    settings = {k: v for k, v in split_settings(meta).items() if k != "fingerprint"}  # the training run's split
    assert load_splits(str(trained["data"]), img_size=IMG, **settings).fingerprint == meta.split_fingerprint


def test_same_files_in_another_place_still_evaluate(cli, trained, tmp_path):
    code, _, err = cli("eval", trained["ckpt"], "--data", _copy(trained, tmp_path))
    assert code == 0, err


def test_eval_refuses_after_an_image_was_added(trained, tmp_path):
    """Class 11 through a real `python -m rtdeploy` process (the cases below run in-process)."""
    data = _copy(trained, tmp_path)
    shutil.copy(data / "class_0" / "class_0_0.png", data / "class_0" / "new.png")
    code, _, err = run_cli("eval", trained["ckpt"], "--data", data)
    one_error_line(code, err, "no longer gives the split", "1 added, 0 removed", "files differ")


@pytest.mark.parametrize("command", ["compress", "export", "bench"])
def test_commands_refuse_after_an_image_was_removed(cli, trained, tmp_path, command):
    data = _copy(trained, tmp_path)
    (data / "class_2" / "class_2_5.png").unlink()
    out = tmp_path / "out"
    argv = {"compress": ["compress", trained["ckpt"], "--criterion", "l1", "--epochs", 1, "--out", out],
            "export": ["export", trained["ckpt"], "--out", out],
            "bench": ["bench", trained["onnx"], "--runs", 2, "--warmup", 0, "--in-process", "--json", out]}[command]
    code, _, err = cli(*argv, "--data", data)
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith("rtdeploy: error: ") and "Traceback" not in err
    assert "0 added, 1 removed" in err and "no longer gives the split" in err
    assert not out.exists()


def test_renamed_image_is_a_different_split(cli, trained, tmp_path):
    data = _copy(trained, tmp_path)
    (data / "class_1" / "class_1_3.png").rename(data / "class_1" / "renamed.png")
    code, _, err = cli("eval", trained["ckpt"], "--data", data)
    assert code == 2 and "1 added, 1 removed" in err, err


def test_older_checkpoint_without_fingerprint_loads_with_a_warning(cli, trained, tmp_path, caplog):
    model, meta = load_checkpoint(trained["ckpt"])
    meta.split_fingerprint = None
    old = tmp_path / "old.pt"
    save_checkpoint(old, model, meta)
    code, _, err = cli("eval", old, "--data", trained["data"])
    assert code == 0, err
    assert "records no split fingerprint" in caplog.text  # a real process prints it on stderr


def test_damaged_fingerprint_is_a_one_line_error(cli, trained, tmp_path):
    model, meta = load_checkpoint(trained["ckpt"])
    meta.split_fingerprint = "fp1 classes:x train:y:!!!"
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, model, meta)
    code, _, err = cli("eval", bad, "--data", trained["data"])
    assert code == 2 and "fingerprint is damaged" in err and len(err.strip().splitlines()) == 1, err


def test_changed_folder_is_refused_before_any_image_is_decoded(cli, trained, tmp_path, monkeypatch):
    data = _copy(trained, tmp_path)
    (data / "class_0" / "class_0_1.png").unlink()

    def no_decoding(*args, **kwargs):
        raise AssertionError("images were decoded before the split was checked")

    monkeypatch.setattr(rdata, "_decode_all", no_decoding)
    monkeypatch.setenv("RTDEPLOY_CACHE_DIR", str(tmp_path / "empty-cache"))  # no cached decode to reuse
    code, _, err = cli("eval", trained["ckpt"], "--data", data)
    assert code == 2 and "0 added, 1 removed" in err and "AssertionError" not in err, err


def test_skip_bad_images_split_is_checked_on_the_images_kept(cli, trained, tmp_path):
    """With --skip-bad-images the split is known only after decoding: a file that became
    unreadable since training changes it, and compress says so."""
    data = _copy(trained, tmp_path)
    (data / "class_1" / "class_1_2.png").write_bytes(b"no longer an image")
    code, _, err = cli("compress", trained["ckpt"], "--data", data, "--criterion", "l1", "--epochs", 1,
                       "--skip-bad-images", "--out", tmp_path / "p.pt")
    assert code == 2 and "0 added, 1 removed" in err, err


# ---------------------------------------------------------------- nesting and empty paths (hostile review)

def test_split_folders_given_as_data_are_refused(cli, tmp_path):
    """data/{train,test}/<class>/: --data data would train 'train' against 'test'. Refused.
    (In-process: folder layouts go through a real process in the link and empty-path tests.)"""
    for split in ("train", "test"):
        make_image_folder(tmp_path / "data" / split, n_classes=3, per_class=3, size=24)
    code, _, err = cli("train", "--data", tmp_path / "data", *FAST_TRAIN, "--out", tmp_path / "m.pt")
    one_error_line(code, err, "test", "train", "point --data at", "classes")
    assert not (tmp_path / "m.pt").exists()


def test_images_only_in_a_nested_sub_folder_get_a_note(cli, tmp_path):
    """class_0/sub/*.png: read recursively as class_0 (the rule), with one note line on stderr
    (in-process through the same entry point: a valid layout, not a hostile one)."""
    data = make_image_folder(tmp_path / "data", n_classes=2, per_class=6, size=24)
    (data / "class_0" / "sub").mkdir()
    for png in (data / "class_0").glob("*.png"):
        png.rename(data / "class_0" / "sub" / png.name)
    code, _, err = cli("train", "--data", data, *FAST_TRAIN, "--out", tmp_path / "m.pt")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "only in sub-folders" in line]
    assert len(notes) == 1 and "class_0" in notes[0] and "class_1" not in notes[0], err
    assert summary_images(tmp_path / "m.pt") == 12


@pytest.mark.parametrize("args,needle", [(["--data", ""], "--data is empty"),
                                         (["--data", "  "], "--data is empty"),
                                         (["--data", "eurosat", "--data-root", ""], "--data-root is empty")])
def test_empty_data_paths_are_refused(cli, tmp_path, args, needle):
    # The first case in a real process (an empty argv entry as a shell passes it), the others
    # in-process through the same entry point: the same exit code and stderr, ~8 s less each.
    if args == ["--data", ""]:
        code, _, err = run_cli("train", *args, *FAST_TRAIN, "--out", tmp_path / "m.pt")
    else:
        code, _, err = cli("train", *args, *FAST_TRAIN, "--out", tmp_path / "m.pt")
    one_error_line(code, err, needle)
    assert not (tmp_path / "m.pt").exists()
