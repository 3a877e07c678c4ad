"""Review 2 (hostile user): `import`, the image cache and lazy decoding.

Each test reproduces a broken README promise found by hand; they fail until the product is fixed.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from rtdeploy.data import load_splits
from rtdeploy.errors import UserInputError
from rtdeploy.importer import import_weights, read_state_dict
from rtdeploy.models import create_model

NORM = ("--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2")


@pytest.fixture
def weights(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "w.pt"
    torch.save(create_model("tiny", 3).state_dict(), path)
    return path


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtdeploy: error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- outputs


def test_import_json_same_file_as_out_is_refused(weights, cli):
    """`--json m.pt --out m.pt` replaced the new checkpoint by the JSON report, exit 0."""
    out = weights.parent / "m.pt"
    code, _, err = cli("import", weights, "--arch", "tiny", "--classes", "a,b,c", "--img-size", "16", *NORM,
                       "--out", out, "--json", out)
    assert code == 2, err
    assert "same file" in _one_line(err)


@pytest.mark.parametrize("flag", ["--out", "--json"])
def test_import_never_overwrites_its_weights_even_with_force(weights, cli, flag):
    """An output that is the input weights file was overwritten with --force (README: --force does not override)."""
    before = weights.read_bytes()
    other = weights.parent / ("o.json" if flag == "--out" else "o.pt")
    args = ["--out", weights, "--json", other] if flag == "--out" else ["--out", other, "--json", weights]
    code, _, err = cli("import", weights, "--arch", "tiny", "--classes", "a,b,c", "--img-size", "16", *NORM,
                       *args, "--force")
    assert code == 2, err
    assert weights.read_bytes() == before


def test_import_out_inside_data_folder_is_refused(weights, image_folder, cli):
    folder = image_folder(n_classes=3, per_class=4, size=16)
    out = folder / "class_0" / "m.pt"
    code, _, err = cli("import", weights, "--arch", "tiny", "--data", folder, "--img-size", "16", "--out", out)
    assert code == 2, err
    assert not out.exists()


@pytest.mark.parametrize("case", ["nan_weight", "negative_variance", "std_zero", "mean_nan", "class_newline"])
def test_rejected_import_leaves_no_checkpoint(weights, tmp_path, case):
    """These were refused only when the written checkpoint was reloaded: the unusable file stayed
    on disk (and the message said to re-create it with 'rtdeploy train')."""
    sd = torch.load(weights, weights_only=True)
    classes, mean, std = ["a", "b", "c"], (0.5,) * 3, (0.2,) * 3
    if case == "nan_weight":
        next(v for v in sd.values() if v.is_floating_point())[0] = float("nan")
    elif case == "negative_variance":
        sd[next(k for k in sd if k.endswith("running_var"))].fill_(-1.0)
    elif case == "std_zero":
        std = (0.0,) * 3
    elif case == "mean_nan":
        mean = (float("nan"), 0.5, 0.5)
    else:
        classes = ["a\nrtdeploy: error: forged", "b", "c"]
    torch.save(sd, weights)
    out = tmp_path / "out.pt"
    with pytest.raises(UserInputError) as exc:
        import_weights(weights, arch="tiny", out=out, img_size=16, classes=classes, mean=mean, std=std)
    assert not out.exists(), "a refused import must not leave a checkpoint"
    assert "rtdeploy train" not in str(exc.value)


# ----------------------------------------------------------------------------- reading weights


@pytest.mark.parametrize("kind", ["meta", "sparse", "int32", "complex"])
def test_unusable_tensor_kinds_are_one_line_input_errors(weights, tmp_path, kind):
    """meta/sparse tensors were an 'internal error' (exit 1); int32 weights were silently truncated
    to integers and complex ones lost their imaginary part (with a raw UserWarning on stderr)."""
    sd = torch.load(weights, weights_only=True)
    conv = next(k for k, v in sd.items() if v.is_floating_point() and v.dim() == 4)
    fc = next(k for k, v in sd.items() if v.is_floating_point() and v.dim() == 2)
    if kind == "meta":
        sd[conv] = sd[conv].to("meta")
    elif kind == "sparse":
        sd[fc] = sd[fc].to_sparse()
    elif kind == "int32":
        sd[conv] = (sd[conv] * 1000).to(torch.int32)
    else:
        sd[conv] = torch.complex(sd[conv], torch.ones_like(sd[conv]))
    torch.save(sd, weights)
    out = tmp_path / "out.pt"
    with pytest.raises(UserInputError):
        import_weights(weights, arch="tiny", out=out, img_size=16, classes=["a", "b", "c"],
                       mean=(0.5,) * 3, std=(0.2,) * 3)
    assert not out.exists()


def test_compressed_weights_file_is_refused_before_inflating(tmp_path):
    """A 200 KB deflated .pt inflated to a 200 MB tensor in memory (1000x): the checkpoint loader's
    'stored entries only, no larger than the file' rule is not applied to `import`."""
    raw, bomb = tmp_path / "raw.pt", tmp_path / "bomb.pt"
    torch.save({"x": torch.zeros(10_000_000)}, raw)  # 40 MB of zeros
    with zipfile.ZipFile(raw) as zi, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zo:
        for info in zi.infolist():
            zo.writestr(info.filename, zi.read(info.filename))
    raw.unlink()
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(UserInputError):
        read_state_dict(bomb)


def test_import_img_size_is_bounded(weights, tmp_path):
    """`--img-size 30000` ran a forward pass on a 30000x30000 image (10 GB input; killed after
    120 s); the README bounds every input size to 8..2048."""
    out = tmp_path / "o.pt"
    with pytest.raises(UserInputError, match="2048") as exc:
        import_weights(weights, arch="tiny", out=out, img_size=2049, classes=["a", "b", "c"],
                       mean=(0.5,) * 3, std=(0.2,) * 3)
    # today 2049 is caught only by the reload of the written file ('damaged metadata', file kept)
    assert "--img-size" in str(exc.value) and not out.exists(), str(exc.value)


# ----------------------------------------------------------------------------- image cache, lazy decoding


def test_skip_bad_images_skips_a_truncated_body_with_data_cache_off(image_folder):
    """With --data-cache off, a PNG whose header is intact but body is cut passes the probe and then
    fails with '... or pass --skip-bad-images' although --skip-bad-images was given."""
    folder = image_folder(n_classes=3, per_class=6, size=24)
    bad = folder / "class_1" / "class_1_3.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    splits = load_splits(str(folder), img_size=16, skip_bad_images=True, data_cache="off")
    for ds in (splits.train, splits.test):
        ds.store.all()  # every kept image decodes
    assert str(bad) not in list(splits.train.paths) + list(splits.test.paths)


def test_disk_cache_is_not_reused_for_changed_pixels(image_folder, tmp_path, monkeypatch):
    """The cache key is (path, size, mtime): a file rewritten with other pixels of the same size and
    mtime (BMP/TIFF, `cp -p`, rsync -t, a coarse-mtime file system) silently gives the old pixels."""
    monkeypatch.setenv("RTDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    folder = image_folder(n_classes=2, per_class=6, size=24, ext=".bmp")
    load_splits(str(folder), img_size=16, data_cache="disk")
    for i in range(6):
        a, b = folder / "class_0" / f"class_0_{i}.bmp", folder / "class_1" / f"class_1_{i}.bmp"
        st = a.stat()
        a.write_bytes(b.read_bytes())
        os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    disk = load_splits(str(folder), img_size=16, data_cache="disk")
    memory = load_splits(str(folder), img_size=16, data_cache="memory")
    assert torch.equal(disk.test.store.all(), memory.test.store.all())


@pytest.mark.parametrize("damage", ["reversed", "out_of_range", "strings"])
def test_damaged_cache_index_is_rebuilt_not_trusted(image_folder, tmp_path, monkeypatch, damage):
    """A damaged index JSON ('kept' edited) gave silently wrong labels (reversed) or an internal
    IndexError/TypeError; the module promises 'stale or damaged: rebuild, never stop'."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RTDEPLOY_CACHE_DIR", str(cache))
    folder = image_folder(n_classes=2, per_class=6, size=24)
    load_splits(str(folder), img_size=16, data_cache="disk")
    index = next(cache.glob("*.json"))
    info = json.loads(index.read_text())
    n = len(info["kept"])
    info["kept"] = {"reversed": info["kept"][::-1], "out_of_range": [10 ** 6] * n, "strings": ["a"] * n}[damage]
    index.write_text(json.dumps(info))
    disk = load_splits(str(folder), img_size=16, data_cache="disk")
    memory = load_splits(str(folder), img_size=16, data_cache="memory")
    def by_path(splits):  # each file's pixels and label, whatever order the split lists them in
        return {p: (img, int(y)) for ds in (splits.train, splits.test)
                for p, img, y in zip(ds.paths, ds.store.all(), ds.labels)}
    got, want = by_path(disk), by_path(memory)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[p][0], want[p][0]) and got[p][1] == want[p][1] for p in want)


def test_bad_image_in_a_loader_worker_is_one_line_without_traceback(image_folder):
    """With --data-cache off and --workers 2, a file that goes bad after the scan fails inside a
    DataLoader worker; torch re-raises the DataError with the worker's whole traceback in its
    message, and the CLI printed that as its 'one line' (\\n-escaped traceback, no RTDEPLOY_DEBUG)."""
    from rtdeploy.data import make_loader

    folder = image_folder(n_classes=2, per_class=4, size=24)
    splits = load_splits(str(folder), img_size=16, data_cache="off", test_frac=0.5)
    for path in splits.train.paths:  # every training file is cut after the scan
        Path(path).write_bytes(Path(path).read_bytes()[: Path(path).stat().st_size // 2])
    with pytest.raises(UserInputError) as exc:
        for _ in make_loader(splits.train, 2, shuffle=False, workers=1):
            pass
    assert "Traceback" not in str(exc.value) and "\n" not in str(exc.value), str(exc.value)[:300]


@pytest.mark.parametrize("command", ["eval", "export"])
def test_bad_image_error_names_only_options_the_command_has(weights, image_folder, tmp_path, cli, command):
    """eval/export (and bench --data) say 'or pass --skip-bad-images', an option they do not have."""
    folder = image_folder(n_classes=3, per_class=6, size=24)
    ckpt = tmp_path / "imp.pt"
    import_weights(weights, arch="tiny", out=ckpt, img_size=16, data=str(folder))
    bad = folder / "class_1" / "class_1_3.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    extra = ["--out", tmp_path / "m.onnx", "--exporter", "torchscript"] if command == "export" else []
    code, _, err = cli(command, ckpt, "--data", folder, *extra)
    assert code == 2, err
    line = _one_line(err)
    if "--skip-bad-images" in line:
        code, out, _ = cli(command, "--help")
        assert "--skip-bad-images" in out, line


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "0", "1e9"])
def test_dist_timeout_env_is_checked(monkeypatch, value):
    from rtdeploy.distributed import _timeout_minutes
    from rtdeploy.errors import ConfigError

    monkeypatch.setenv("RTDEPLOY_DIST_TIMEOUT_MIN", value)
    with pytest.raises(ConfigError, match="RTDEPLOY_DIST_TIMEOUT_MIN"):
        _timeout_minutes()
    monkeypatch.setenv("RTDEPLOY_DIST_TIMEOUT_MIN", "2.5")
    assert _timeout_minutes() == 2.5


@pytest.mark.parametrize("value", ["abc"])  # the other values: the unit test above
def test_bad_dist_timeout_env_is_named(image_folder, tmp_path, value):
    """RTDEPLOY_DIST_TIMEOUT_MIN=abc was an 'internal error: ValueError' and -1 / nan were reported as
    'could not join the torchrun job ...; check the rendezvous flags' (wrong cause, wrong fix)."""
    import subprocess
    import sys

    folder = image_folder(n_classes=2, per_class=4, size=16)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
           "RTDEPLOY_DIST_TIMEOUT_MIN": value}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "rtdeploy",
                           "train", "--data", str(folder), "--arch", "tiny", "--img-size", "16", "--epochs", "1",
                           "--batch-size", "4", "--out", str(tmp_path / "m.pt")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("rtdeploy: error: ")]
    assert len(ours) == 1 and "RTDEPLOY_DIST_TIMEOUT_MIN" in ours[0], proc.stderr[-2000:]


# ----------------------------------------------------------------------------- cache folder, warnings


def test_cache_folder_inside_the_data_is_refused(image_folder, tmp_path, cli, monkeypatch):
    """RTDEPLOY_CACHE_DIR=D/cache worked once, then every later scan of D met a class 'cache' with
    no images. Refused up front, naming the variable."""
    folder = image_folder(n_classes=2, per_class=4, size=16)
    monkeypatch.setenv("RTDEPLOY_CACHE_DIR", str(folder / "cache"))
    code, _, err = cli("train", "--data", folder, "--arch", "tiny", "--img-size", "16", "--epochs", "1",
                       "--out", tmp_path / "m.pt")
    assert code == 2 and "RTDEPLOY_CACHE_DIR" in _one_line(err) and "inside the data folder" in err
    assert not (folder / "cache").exists() and not (tmp_path / "m.pt").exists()
    # decoding on demand needs no cache folder at all
    code, _, err = cli("train", "--data", folder, "--arch", "tiny", "--img-size", "16", "--epochs", "1",
                       "--data-cache", "off", "--out", tmp_path / "m.pt")
    assert code == 0, err


def test_cache_path_that_is_a_file_is_one_warning_line(image_folder, tmp_path, cli, monkeypatch):
    folder = image_folder(n_classes=2, per_class=4, size=16)
    not_a_folder = tmp_path / "cachefile"
    not_a_folder.write_text("x")
    monkeypatch.setenv("RTDEPLOY_CACHE_DIR", str(not_a_folder))
    code, _, err = cli("train", "--data", folder, "--arch", "tiny", "--img-size", "16", "--epochs", "1",
                       "--out", tmp_path / "m.pt")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "cachefile" in line]
    assert len(warnings) == 1 and warnings[0].startswith("rtdeploy: warning: RTDEPLOY_CACHE_DIR"), err
    assert not_a_folder.read_text() == "x"


def test_interrupt_message_offers_resume_only_where_it_exists(monkeypatch):
    from rtdeploy.cli import app as cli_app

    monkeypatch.setattr(cli_app, "_command", "import")
    assert "--resume" not in cli_app._interrupted()
    monkeypatch.setattr(cli_app, "_command", "train")
    assert "--resume" in cli_app._interrupted()


def test_weights_file_is_recognised_by_its_content(weights, tmp_path):
    """A safetensors file named .pt was 'pickled Python objects'; an ONNX file too; a folder or
    FIFO 'did not exist'."""
    from safetensors.torch import save_file

    from rtdeploy.errors import CheckpointError

    sd = torch.load(weights, weights_only=True)
    renamed = tmp_path / "st.pt"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(renamed))
    got, fmt, _, _ = read_state_dict(renamed)
    assert fmt == "safetensors" and all(torch.equal(got[k], sd[k]) for k in sd)

    onnx_file = tmp_path / "m.pt"
    model = create_model("tiny", 3).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(onnx_file), dynamo=False)
    with pytest.raises(CheckpointError, match="ONNX model"):
        read_state_dict(onnx_file)
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    for odd in (tmp_path, fifo):
        with pytest.raises(CheckpointError, match="not a regular file"):
            read_state_dict(odd)


def test_head_mismatch_through_data_names_the_data(tmp_path, image_folder, cli):
    """With the classes taken from --data (no --classes given), the message must not blame --classes."""
    torch.manual_seed(0)
    path = tmp_path / "w5.pt"
    torch.save(create_model("tiny", 5).state_dict(), path)
    folder = image_folder(n_classes=3, per_class=4, size=16)
    code, _, err = cli("import", path, "--arch", "tiny", "--data", folder, "--img-size", "16", "--out", tmp_path / "o.pt")
    line = _one_line(err)
    assert code == 2 and "--classes lists" not in line and "--data" in line and "5 outputs" in line, line
