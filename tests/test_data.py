"""rtdeploy.data: folder/EuroSAT/sample loading, image modes, splits, normalisation, cache."""
from __future__ import annotations

import io
import os
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rtdeploy import data
from rtdeploy.data import ImageTensorDataset, check_classes, load_splits, make_loader, preprocess, sample_path
from rtdeploy.errors import ConfigError, DataError


def _per_class(ds, classes) -> dict[str, int]:
    counts = Counter(ds.labels.tolist())
    return {name: counts[i] for i, name in enumerate(classes)}


# ----------------------------------------------------------------------------- splits


def test_split_is_stratified_and_deterministic(image_folder):
    root = image_folder(n_classes=3, per_class=10)
    a = load_splits(str(root), img_size=16, seed=0)
    b = load_splits(str(root), img_size=16, seed=0)
    c = load_splits(str(root), img_size=16, seed=1)
    assert a.classes == ["class_0", "class_1", "class_2"]
    assert _per_class(a.test, a.classes) == {n: 3 for n in a.classes}
    assert _per_class(a.train, a.classes) == {n: 7 for n in a.classes}
    assert a.val is None and a.eval_split is a.test
    assert a.test.paths == b.test.paths and torch.equal(a.train.images, b.train.images)
    assert a.test.paths != c.test.paths
    assert not set(a.train.paths) & set(a.test.paths)
    assert a.source == f"folder:{root.resolve()}" and a.seed == 0 and a.img_size == 16


def test_val_split_comes_out_of_train(image_folder):
    root = image_folder(n_classes=3, per_class=10)
    s = load_splits(str(root), img_size=16, test_frac=0.3, val_frac=0.2)
    assert _per_class(s.val, s.classes) == {n: 2 for n in s.classes}
    assert _per_class(s.train, s.classes) == {n: 5 for n in s.classes}
    assert s.eval_split is s.val
    assert len({*s.train.paths, *s.val.paths, *s.test.paths}) == 30


def test_too_small_class_is_named(image_folder, noisy_image):
    root = image_folder(n_classes=2, per_class=5)
    (root / "tiny").mkdir()
    noisy_image((1, 2, 3)).save(root / "tiny" / "only.png")
    with pytest.raises(DataError, match="'tiny' has 1 usable images"):
        load_splits(str(root), img_size=16)


def test_max_per_class_caps_deterministically(image_folder):
    root = image_folder(n_classes=3, per_class=10)
    a = load_splits(str(root), img_size=16, max_per_class=4, seed=3)
    b = load_splits(str(root), img_size=16, max_per_class=4, seed=3)
    assert len(a.train) + len(a.test) == 12
    assert sorted(a.train.paths + a.test.paths) == sorted(b.train.paths + b.test.paths)


@pytest.mark.parametrize(("kwargs", "flag"), [
    ({"img_size": 0}, "--img-size"),
    ({"img_size": 7}, "--img-size"),
    ({"test_frac": 0.0}, "--test-frac"),
    ({"test_frac": 1.0}, "--test-frac"),
    ({"val_frac": -0.1}, "--val-frac"),
    ({"test_frac": 0.5, "val_frac": 0.5}, "--test-frac \\+ --val-frac"),
    ({"mean": (0.5, 0.5)}, "--mean"),
    ({"std": (0.5, 0.0, 0.5)}, "--std"),
    ({"crop_scale": 0.0}, "--crop-scale"),
    ({"crop_scale": 1.5}, "--crop-scale"),
])
def test_bad_settings_name_the_flag(image_folder, kwargs, flag):
    root = image_folder()
    with pytest.raises(ConfigError, match=flag):
        load_splits(str(root), **kwargs)


# ----------------------------------------------------------------------------- folders


def test_missing_path_names_it_and_the_accepted_values(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope does not exist.*'sample', 'eurosat'"):
        load_splits(str(missing))


def test_folder_without_class_folders(tmp_path, noisy_image):
    noisy_image((5, 5, 5)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match=f"{tmp_path}.*no class sub-folders"):
        load_splits(str(tmp_path))


def test_single_class(image_folder):
    root = image_folder(n_classes=1)
    with pytest.raises(DataError, match="only one class folder"):
        load_splits(str(root))


def test_empty_class_folder(image_folder):
    root = image_folder(n_classes=2)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="empty has no images"):
        load_splits(str(root))


def test_non_image_files_ignored(image_folder):
    root = image_folder(n_classes=2, per_class=5)
    (root / "class_0" / "notes.txt").write_text("x")
    (root / "class_0" / ".DS_Store").write_bytes(b"\0\0")
    (root / "class_0" / "._class_0_0.png").write_bytes(b"AppleDouble")
    (root / "README.md").write_text("top-level files are not classes")
    s = load_splits(str(root), img_size=16)
    assert len(s.train) + len(s.test) == 10 and s.skipped == []


def _truncated_png(noisy_image) -> bytes:
    buf = io.BytesIO()
    noisy_image((9, 9, 9), size=64, noise=120).save(buf, "PNG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def test_corrupt_image_is_named(image_folder, noisy_image):
    root = image_folder(n_classes=2, per_class=5)
    (root / "class_1" / "broken.png").write_bytes(_truncated_png(noisy_image))
    with pytest.raises(DataError, match="broken.png.*--skip-bad-images"):
        load_splits(str(root), img_size=16)


def test_skip_bad_images_lists_them(image_folder, noisy_image):
    root = image_folder(n_classes=2, per_class=5)
    (root / "class_1" / "broken.png").write_bytes(_truncated_png(noisy_image))
    (root / "class_0" / "garbage.jpg").write_bytes(b"this is not a jpeg")
    s = load_splits(str(root), img_size=16, skip_bad_images=True)
    assert sorted(Path(p).name for p in s.skipped) == ["broken.png", "garbage.jpg"]
    assert len(s.train) + len(s.test) == 10
    # The cached result remembers the bad files: without the flag it still refuses.
    with pytest.raises(DataError, match="--skip-bad-images"):
        load_splits(str(root), img_size=16)


def test_progress_reaches_total(image_folder):
    root = image_folder(n_classes=3, per_class=4)
    calls = []
    load_splits(str(root), img_size=16, on_progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (12, 12) and [d for d, _ in calls] == sorted(d for d, _ in calls)


# ----------------------------------------------------------------------------- image modes


def _uniform(mode: str, value, size: int = 20) -> Image.Image:
    return Image.new(mode, (size, size), value)


def _palette_image() -> Image.Image:
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 30, 120, 220] + [0] * 762)
    return img


def _uint16(value: int) -> Image.Image:
    return Image.fromarray(np.full((20, 20), value, dtype=np.uint16))


def _int32(value: int) -> Image.Image:
    return Image.fromarray(np.full((20, 20), value, dtype=np.int32))


# (file name, image factory, expected RGB, tolerance). 32896 / 257 = 128 exactly.
MODE_CASES = [
    ("l.png", lambda: _uniform("L", 100), (100, 100, 100), 0),
    ("la.png", lambda: _uniform("LA", (100, 0)), (100, 100, 100), 0),
    ("p.png", _palette_image, (30, 120, 220), 0),
    ("rgba.png", lambda: _uniform("RGBA", (10, 20, 30, 0)), (10, 20, 30), 0),
    ("cmyk.jpg", lambda: _uniform("CMYK", (0, 255, 255, 0)), (255, 0, 0), 6),
    ("i16.png", lambda: _uint16(32896), (128, 128, 128), 0),
    ("i16.tif", lambda: _uint16(65535), (255, 255, 255), 0),
    ("i32.tif", lambda: _int32(32896), (128, 128, 128), 0),
    ("bw.bmp", lambda: _uniform("1", 1), (255, 255, 255), 0),
]


@pytest.mark.parametrize(("name", "factory", "rgb", "tol"), MODE_CASES, ids=[c[0] for c in MODE_CASES])
def test_modes_convert_to_rgb(tmp_path, name, factory, rgb, tol):
    factory().save(tmp_path / name)
    with Image.open(tmp_path / name) as img:
        out = preprocess(img, 16)
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
    assert (out.int() - torch.tensor(rgb).view(3, 1, 1)).abs().max() <= tol


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    _uint16(1000).save(tmp_path / "dark.png")
    with Image.open(tmp_path / "dark.png") as img:
        assert img.mode == "I;16"
        assert np.asarray(img.convert("RGB")).max() == 255  # what plain PIL does: clipped white
        assert preprocess(img, 16).max() == 4  # 1000 / 257


def test_mixed_modes_load_as_a_dataset(tmp_path):
    for c, (name, factory, _, _) in enumerate(MODE_CASES):
        (tmp_path / f"c{c}").mkdir()
        for i in range(2):
            factory().save(tmp_path / f"c{c}" / f"{i}_{name}")
    s = load_splits(str(tmp_path), img_size=16, test_frac=0.5)
    assert len(s.classes) == len(MODE_CASES) and s.train.images.shape == (len(MODE_CASES), 3, 16, 16)


def test_preprocess_resizes_non_square():
    out = preprocess(Image.new("RGB", (50, 30), (1, 2, 3)), 24)
    assert out.shape == (3, 24, 24) and out[:, 0, 0].tolist() == [1, 2, 3]


# ----------------------------------------------------------------------------- normalisation


def test_mean_std_come_from_train(image_folder):
    s = load_splits(str(image_folder(n_classes=3, per_class=10)), img_size=16)

    def stats(ds):
        x = ds.images.double() / 255
        return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3), unbiased=False)

    mean, std = stats(s.train)
    assert torch.allclose(torch.tensor(s.mean, dtype=torch.float64), mean, atol=1e-6)
    assert torch.allclose(torch.tensor(s.std, dtype=torch.float64), std, atol=1e-6)
    assert not torch.allclose(torch.tensor(s.mean, dtype=torch.float64), stats(s.test)[0], atol=1e-4)
    for ds in (s.train, s.test):
        assert ds.mean == s.mean and ds.std == s.std
    x = s.train.normalised()
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 0.05


def test_given_mean_std_are_used(image_folder):
    s = load_splits(str(image_folder()), img_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert s.test.mean == (0.5, 0.5, 0.5) and s.train.std == (0.25, 0.25, 0.25)
    img, _ = s.test[0]
    assert torch.allclose(img, (s.test.images[0].float() / 255 - 0.5) / 0.25)


def test_std_floor_for_constant_images(tmp_path):
    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        for i in range(3):
            Image.new("RGB", (16, 16), (50, 50, 50)).save(tmp_path / f"c{c}" / f"{i}.png")
    s = load_splits(str(tmp_path), img_size=16)
    assert min(s.std) == pytest.approx(1e-3)


# ----------------------------------------------------------------------------- augmentation


def test_augment_off_by_default(image_folder):
    s = load_splits(str(image_folder()), img_size=16)
    assert not s.train.augment
    stacked = torch.stack([s.train[i][0] for i in range(len(s.train))])
    assert torch.equal(stacked, s.train.normalised())


def test_augment_deterministic_per_seed_epoch_index(image_folder):
    root = image_folder(n_classes=3, per_class=10)
    s = load_splits(str(root), img_size=16, augment=True, seed=5)
    t = load_splits(str(root), img_size=16, augment=True, seed=5)
    assert s.train.augment and not s.test.augment
    epoch0 = torch.stack([s.train[i][0] for i in range(len(s.train))])
    assert not torch.equal(epoch0, s.train.normalised())  # some item got flipped or rotated
    t.train.set_epoch(0)
    assert torch.equal(epoch0, torch.stack([t.train[i][0] for i in range(len(t.train))]))
    s.train.set_epoch(1)
    assert not torch.equal(epoch0, torch.stack([s.train[i][0] for i in range(len(s.train))]))
    # Every augmented view is one of the 8 flips/rotations of the original.
    raw = s.train.images[0]
    views = [torch.rot90(v, k, dims=(1, 2)) for v in (raw, raw.flip(2)) for k in range(4)]
    got = (s.train[0][0] * torch.tensor(s.std).view(3, 1, 1) + torch.tensor(s.mean).view(3, 1, 1))
    got = (got * 255).round().to(torch.uint8)
    assert any(torch.equal(got, v) for v in views)


def test_random_crop_is_a_resized_sub_square_and_deterministic(image_folder):
    root = image_folder(n_classes=3, per_class=10)
    plain = load_splits(str(root), img_size=16, augment=True, seed=5)
    crop = load_splits(str(root), img_size=16, augment=True, seed=5, crop_scale=0.3)
    again = load_splits(str(root), img_size=16, augment=True, seed=5, crop_scale=0.3)
    assert crop.train.crop_scale == 0.3 and crop.test.crop_scale == 0.3
    a = torch.stack([crop.train[i][0] for i in range(len(crop.train))])
    assert a.shape == plain.train.normalised().shape and torch.isfinite(a).all()
    assert torch.equal(a, torch.stack([again.train[i][0] for i in range(len(again.train))]))
    assert not torch.equal(a, torch.stack([plain.train[i][0] for i in range(len(plain.train))]))
    # The test split is never augmented, crops or not.
    assert torch.equal(torch.stack([crop.test[i][0] for i in range(len(crop.test))]), crop.test.normalised())
    # A constant image stays constant under any crop + resize (no padding, no border leaks in).
    flat = ImageTensorDataset(torch.full((4, 3, 16, 16), 77, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                              mean=(0, 0, 0), std=(1, 1, 1), augment=True, crop_scale=0.2)
    assert all(torch.allclose(flat[i][0], torch.full((3, 16, 16), 77 / 255)) for i in range(4))


def test_loader_order_and_augment_independent_of_workers(image_folder):
    s = load_splits(str(image_folder(n_classes=3, per_class=10)), img_size=16, augment=True)

    def batches(workers: int, epoch: int):
        loader = make_loader(s.train, 4, shuffle=True, seed=1, epoch=epoch, workers=workers)
        return [(x, y) for x, y in loader]

    one, two = batches(0, 2), batches(2, 2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, two))
    other_epoch = batches(0, 3)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(one, other_epoch))
    assert s.train.epoch == 3


def test_loader_rejects_bad_batch_size(image_folder):
    s = load_splits(str(image_folder()), img_size=16)
    with pytest.raises(ConfigError, match="--batch-size"):
        make_loader(s.train, 0, shuffle=False)


# ----------------------------------------------------------------------------- eurosat, sample


EUROSAT_CLASSES = ["AnnualCrop", "Forest", "River"]


def _no_download(*args, **kwargs):
    raise urllib.error.URLError("network disabled in tests")


def test_eurosat_layout_loads_offline(tmp_path, monkeypatch, image_folder):
    import torchvision.datasets.eurosat as tv_eurosat

    monkeypatch.setattr(tv_eurosat, "download_and_extract_archive", _no_download)
    image_folder(root=tmp_path / "eurosat" / "2750", per_class=4, size=64, ext=".jpg",
                 class_names=EUROSAT_CLASSES)
    s = load_splits("eurosat", data_root=str(tmp_path), img_size=32)
    assert s.classes == EUROSAT_CLASSES and s.source == f"eurosat:{tmp_path.resolve()}"
    assert s.train.images.shape[1:] == (3, 32, 32) and len(s.train) + len(s.test) == 12


def test_eurosat_missing_and_offline_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets.eurosat as tv_eurosat

    monkeypatch.setattr(tv_eurosat, "download_and_extract_archive", _no_download)
    with pytest.raises(DataError, match=f"not under {tmp_path}.*could not be downloaded.*2750/"):
        load_splits("eurosat", data_root=str(tmp_path))


def test_sample_loads_without_writing_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    before = sorted(p for p in sample_path().rglob("*"))
    s = load_splits()
    assert len(s.classes) == 21 and s.source == "sample"
    assert _per_class(s.test, s.classes) == {n: 12 for n in s.classes}
    assert len(s.train) == 21 * 28 and s.train.images.shape[1:] == (3, 64, 64)
    assert load_splits(None).test.paths == s.test.paths
    assert sorted(p for p in sample_path().rglob("*")) == before
    assert not (tmp_path / "cache").exists()


def test_sample_is_small():
    files = [p for p in sample_path().rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 4 * 2**20
    assert (sample_path() / "README.md").read_text().count("Yi Yang and Shawn Newsam") == 1


# ----------------------------------------------------------------------------- cache


def _refuse_decode(path, img_size):
    raise RuntimeError(f"decoded {path} although it should have come from the cache")


def test_cache_hit_returns_identical_tensors(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("RTDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    root = image_folder()
    first = load_splits(str(root), img_size=16)
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1
    assert not list((tmp_path / "cache").glob("*.tmp"))
    monkeypatch.setattr(data, "_decode_file", _refuse_decode)
    second = load_splits(str(root), img_size=16)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)
    assert first.test.paths == second.test.paths and first.mean == second.mean
    with pytest.raises(RuntimeError, match="should have come from the cache"):
        load_splits(str(root), img_size=24)  # another size is another key


def test_cache_invalidated_by_changed_file(image_folder, noisy_image, tmp_path, monkeypatch):
    monkeypatch.setenv("RTDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    root = image_folder()
    load_splits(str(root), img_size=16)
    changed = root / "class_0" / "class_0_0.png"
    noisy_image((0, 0, 0), size=40, noise=0).save(changed)
    os.utime(changed, ns=(1, 1))
    monkeypatch.setattr(data, "_decode_file", _refuse_decode)
    with pytest.raises(RuntimeError, match="should have come from the cache"):
        load_splits(str(root), img_size=16)


def test_no_cache_env(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("RTDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RTDEPLOY_NO_CACHE", "1")
    load_splits(str(image_folder()), img_size=16)
    assert not (tmp_path / "cache").exists()


def test_damaged_cache_is_ignored(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("RTDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    root = image_folder()
    first = load_splits(str(root), img_size=16)
    (cache_file,) = (tmp_path / "cache").glob("*.u8")
    cache_file.write_bytes(b"garbage")
    again = load_splits(str(root), img_size=16)
    assert torch.equal(first.train.images, again.train.images)


# ----------------------------------------------------------------------------- classes


def test_check_classes():
    check_classes(["a", "b"], ["a", "b"])
    with pytest.raises(DataError, match="missing from the data: c.*--data"):
        check_classes(["a", "b"], ["a", "b", "c"])
    with pytest.raises(DataError, match="different order"):
        check_classes(["b", "a"], ["a", "b"])
