"""Data larger than RAM (issue 14): the decoded images live in a cache file shared through the
page cache (or are decoded on demand), statistics stream, and a training process's peak RSS does
not grow with the dataset."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rtdeploy import data, imagestore
from rtdeploy.data import load_splits, make_loader
from rtdeploy.errors import ConfigError, DataError


def _batches(ds, workers: int = 0):
    return [(x, y) for x, y in make_loader(ds, 5, shuffle=True, seed=2, epoch=1, workers=workers)]


def test_disk_memory_and_lazy_give_the_same_data(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("RTDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    root = image_folder(n_classes=3, per_class=8, size=20)
    disk = load_splits(str(root), img_size=16, augment=True, crop_scale=0.5)
    memory = load_splits(str(root), img_size=16, augment=True, crop_scale=0.5, data_cache="memory")
    lazy = load_splits(str(root), img_size=16, augment=True, crop_scale=0.5, data_cache="off")
    assert isinstance(disk.train.store, imagestore.FileStore)
    assert isinstance(memory.train.store, imagestore.TensorStore)
    assert isinstance(lazy.train.store, imagestore.LazyStore)
    # One flat uint8 file of exactly N x 3 x 16 x 16 bytes plus its index, nothing half-written.
    (u8,) = (tmp_path / "cache").glob("*.u8")
    assert u8.stat().st_size == 24 * 3 * 16 * 16
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1 and not list((tmp_path / "cache").glob(".*"))
    for other in (memory, lazy):
        assert other.mean == disk.mean and other.std == disk.std
        assert torch.equal(other.test.images, disk.test.images) and other.test.paths == disk.test.paths
        for a, b in zip(_batches(other.train), _batches(disk.train)):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Worker processes open the cache file (and decode files) themselves: same batches.
    for split in (disk.train, lazy.train):
        for a, b in zip(_batches(split, workers=2), _batches(memory.train)):
            assert torch.equal(a[0], b[0])


def test_cache_mode_is_checked(image_folder):
    with pytest.raises(ConfigError, match="--data-cache must be one of disk, memory, off"):
        load_splits(str(image_folder()), img_size=16, data_cache="ram")


def test_lazy_mode_skips_or_names_files_that_are_not_images(image_folder):
    root = image_folder(n_classes=2, per_class=4)
    (root / "class_0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png.*--skip-bad-images"):
        load_splits(str(root), img_size=16, data_cache="off")
    s = load_splits(str(root), img_size=16, data_cache="off", skip_bad_images=True)
    assert [os.path.basename(p) for p in s.skipped] == ["broken.png"] and len(s.train) + len(s.test) == 8


def test_channel_stats_are_exact_and_streamed(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 3, 12, 12), dtype=torch.uint8, generator=gen)
    x = images.double() / 255
    want_mean = x.mean(dim=(0, 2, 3))
    want_std = x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False)
    seen = []
    real_chunks = imagestore.ImageStore.chunks

    def spy(self, chunk_bytes=imagestore.CHUNK_BYTES):
        for block in real_chunks(self, 5 * 3 * 12 * 12):  # 5 images at a time
            seen.append(len(block))
            yield block

    monkeypatch.setattr(imagestore.TensorStore, "chunks", spy)
    mean, std = data._channel_stats(images)
    assert max(seen) == 5 and sum(seen) == 37
    np.testing.assert_allclose(mean, want_mean.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, want_std.numpy(), rtol=0, atol=1e-12)


# Linux copies the parent's peak RSS into a forked child, so a child of a big pytest process
# reports the parent's peak. A small wrapper process starts the command and reports its peak.
_WRAPPER = ("import resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
            "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def _peak_rss_mb(cmd, env) -> float:
    """ru_maxrss of the command (through a small wrapper process), in MB."""
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    code, kb = out.stdout.split()
    assert code == "0", out.stderr
    return int(kb) / 1024


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_the_dataset(image_folder, tmp_path):
    """Train on 120 and on 1,200 images at 64 px (1.4 vs 14.1 MB decoded). With the disk cache
    (default) and with decoding on demand (off), the larger set may add at most `budget_mb` to
    the process's peak RSS: less than the 12.7 MB the extra images decode to. Holding them in
    memory (--data-cache memory, the old way) must break the budget, or the test proves nothing.
    The batch size is the same and both train splits hold a full batch, so activations match;
    measured here: disk +1.2 MB, off -0.8 MB, memory +31.5 MB."""
    budget_mb = 8.0
    small = image_folder(n_classes=3, per_class=40, size=64, root=tmp_path / "small")
    large = image_folder(n_classes=3, per_class=400, size=64, root=tmp_path / "large")
    extra_mb = (1200 - 120) * 3 * 64 * 64 / 2**20
    assert extra_mb > budget_mb
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RTDEPLOY_CACHE_DIR": str(tmp_path / "cache")}

    def peak(folder, mode):
        # Most images in the test split: the forward pass alone keeps the run short.
        cmd = [sys.executable, "-m", "rtdeploy", "train", "--data", str(folder), "--arch", "tv/mobilenet_v3_small",
               "--img-size", "64", "--epochs", "1", "--batch-size", "8", "--test-frac", "0.9", "--val-frac", "0",
               "--data-cache", mode, "--out", str(tmp_path / f"{folder.name}-{mode}.pt")]
        return _peak_rss_mb(cmd, env)

    base = peak(small, "disk")
    grown = {mode: peak(large, mode) - base for mode in ("disk", "off", "memory")}
    assert grown["disk"] < budget_mb and grown["off"] < budget_mb, grown
    assert grown["memory"] > extra_mb, grown  # the measurement sees decoded images when they are held
