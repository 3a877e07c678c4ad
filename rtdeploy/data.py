"""Datasets (class folders, EuroSAT, the embedded UC Merced sample), stratified splits, transforms.

Images are decoded once into a uint8 tensor [N,3,S,S] (cached on disk) and normalised on the fly,
so an epoch never touches PIL. Everything random (split, subset, shuffle, augmentation) is a
function of `seed` (and the epoch), never of the worker count or global RNG state.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from rtdeploy import distributed, imagestore
from rtdeploy import fingerprint as split_fingerprint
from rtdeploy.errors import ConfigError, DataError, UserInputError
from rtdeploy.fields import MIN_STD
from rtdeploy.imagefile import check_pixels, failure_reason, loaded_image, open_regular
from rtdeploy.names import show
from rtdeploy.scan import IMAGE_EXTENSIONS, ScanReport, scan_classes

log = logging.getLogger(__name__)

DATA_HELP = "pass 'sample', 'eurosat' or a folder with one sub-folder of images per class"
_CACHE_VERSION = 1
_STD_FLOOR = 1e-3  # a constant channel (e.g. a synthetic test image) must not divide by zero
Progress = Callable[[int, int], None]


def sample_path() -> Path:
    """The embedded UC Merced sample (21 classes x 40 images, 64x64 WebP) inside the package."""
    return Path(__file__).resolve().parent / "assets" / "ucm_sample"


# ----------------------------------------------------------------------------- decoding


def _wide_to_u8(img: Image.Image) -> np.ndarray:
    # PIL's convert("RGB") clips 16/32-bit values at 255 instead of scaling them, which turns a
    # 16-bit scene white. Scale by the range the data really uses: 8 bit, 16 bit (/257 maps
    # 65535 -> 255 exactly), or, for anything else (negative or > 16 bit, float), min-max.
    # In place after the one float copy: a large image must not cost four float64 copies.
    arr = np.asarray(img).astype(np.float64)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        arr *= 255.0
    elif img.mode.startswith("I;16") or (lo >= 0.0 and 255.0 < hi <= 65535.0):
        arr /= 257.0
    elif lo < 0.0 or hi > 255.0:
        arr -= lo
        arr *= 255.0 / max(hi - lo, 1e-12)
    np.rint(arr, out=arr)
    return np.clip(arr, 0, 255, out=arr).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; alpha is dropped, not composited (it carries no scene data)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(_wide_to_u8(img)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    if img.mode in ("La", "RGBa"):  # premultiplied alpha: PIL cannot convert these to RGB directly
        img = img.convert("LA" if img.mode == "La" else "RGBA")
    return img.convert("RGB")


def preprocess(img: Image.Image, img_size: int) -> torch.Tensor:
    """Convert a PIL image of any mode to RGB and resize it: uint8 tensor [3, img_size, img_size].

    Resizing is bilinear; Pillow widens the filter when shrinking, so it is antialiased.
    """
    rgb = _to_rgb(img)
    if rgb.size != (img_size, img_size):
        rgb = rgb.resize((img_size, img_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _decode_file(path: str, img_size: int) -> torch.Tensor | str:
    """Decode one file; the reason as a string when it cannot be used as an image.

    Any Exception from a decoder counts: Pillow's plugins raise TypeError, struct.error,
    IndexError, NotImplementedError, ... on crafted or odd files, not only OSError."""
    try:
        with loaded_image(path) as img:
            return preprocess(img, img_size)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.info("cannot decode %s: %s: %s", show(path), type(exc).__name__, show(exc))
        return show(failure_reason(exc))


def _bad_image_error(path: str, reason: str = "corrupt or truncated", n_bad: int = 1) -> DataError:
    more = f" (and {n_bad - 1} more bad files)" if n_bad > 1 else ""
    return DataError(
        f"{show(path)}: not a readable image ({show(reason)}){more}; "
        "replace or delete it, or pass --skip-bad-images to skip bad files"
    )


def _decode_all(paths: list[str], img_size: int, skip_bad: bool, on_progress: Progress | None):
    """Decode in threads (PIL releases the GIL while decoding): (images, kept indices, bad paths)."""
    images: list[torch.Tensor] = []
    kept: list[int] = []
    bad: list[str] = []
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        try:
            for i, tensor in enumerate(pool.map(_decode_file, paths, [img_size] * len(paths))):
                if isinstance(tensor, str):
                    if not skip_bad:
                        raise _bad_image_error(paths[i], tensor)
                    bad.append(paths[i])
                else:
                    images.append(tensor)
                    kept.append(i)
                if on_progress is not None:
                    on_progress(i + 1, len(paths))
        except BaseException:
            # pool.map queued every image up front; leaving the `with` would otherwise wait for
            # all of them: a SIGTERM/Ctrl-C (KeyboardInterrupt here) must end the run in seconds.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    stacked = torch.stack(images) if images else torch.empty(0, 3, img_size, img_size, dtype=torch.uint8)
    return stacked, kept, bad


# ----------------------------------------------------------------------------- cache
# Decoded images live in an ImageStore (imagestore.py): a shared disk cache read with pread
# (default for folders), this process's memory, or nowhere (decoded on demand, --data-cache off).


def _decode(path: str, img_size: int) -> torch.Tensor | str:
    return _decode_file(path, img_size)  # looked up at call time (tests replace _decode_file)


def _probe_file(path: str) -> str | None:
    """Whether `path` opens as an image (header and size only): None, or the reason it does not."""
    try:
        with open_regular(path) as fh, Image.open(fh) as img:
            check_pixels(img)
            return None
    except Exception as exc:  # noqa: BLE001 - as in _decode_file: any decoder error is a bad file
        return show(failure_reason(exc))


def _check_cache_outside(root: Path) -> None:
    """The image cache may not live inside the data folder: its folder would be scanned as a class
    (with no images) on the next run, and its files could be read as data."""
    folder = imagestore.cache_dir()
    if folder is None:
        return
    cache, data = os.path.realpath(folder), os.path.realpath(root)
    if cache == data or cache.startswith(data.rstrip(os.sep) + os.sep):
        raise ConfigError(f"{imagestore.CACHE_ENV} {show(folder)} lies inside the data folder {show(root)}; "
                          "point it at a folder outside the data (or pass --data-cache off)")


def _load_images(paths, img_size, skip_bad, on_progress, mode: str = "disk"):
    """(ImageStore, kept indices, skipped paths) for the cache `mode`: disk, memory or off."""
    return imagestore.load_images(paths, img_size, skip_bad, on_progress, imagestore.check_mode(mode),
                                  decode=_decode, decode_all=_decode_all, bad_error=_bad_image_error,
                                  probe=_probe_file)


def _data_fingerprint(root: Path, files: list[list[str]]) -> str:
    """What every torchrun rank must agree on: the files (relative to the root) and their sizes."""
    h = hashlib.sha256()
    for class_files in files:
        for p in class_files:
            h.update(f"{os.path.relpath(p, root)}:{os.path.getsize(p)}\n".encode())
        h.update(b"--\n")
    return h.hexdigest()


# ----------------------------------------------------------------------------- sources


def _scan_folder(root: Path) -> tuple[list[str], list[list[str]], ScanReport]:
    """Classes (sorted like torchvision's ImageFolder), each class's image files, what was skipped.

    Links, special files and repeated files follow the rule in rtdeploy/scan.py."""
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"--data {show(root)} {what}; {DATA_HELP}")
    classes, files, report = scan_classes(root)
    if not classes:
        raise DataError(f"{show(root)} has no class sub-folders; put images in {show(root)}/<class>/<image>")
    if len(classes) < 2:
        raise DataError(f"{show(root)} has only one class folder ({show(classes[0])}); a classifier needs at "
                        "least 2 classes, one sub-folder each")
    for name, found in zip(classes, files):
        if not found:
            skipped = f" ({report.summary()})" if report.count else ""
            raise DataError(f"{show(root / name)} has no images ({', '.join(IMAGE_EXTENSIONS)}){skipped}; "
                            "add images or remove the folder")
    return classes, files, report


def _eurosat_folder(data_root: str | None) -> tuple[Path, str]:
    """The EuroSAT RGB class folder, downloading it through torchvision only when it is missing."""
    root = Path(data_root or "~/.cache/rtdeploy/eurosat").expanduser().resolve()
    folder = root / "eurosat" / "2750"  # torchvision's EuroSAT layout: <root>/eurosat/2750/<Class>
    if not folder.is_dir():
        from torchvision.datasets import EuroSAT

        log.info("EuroSAT not found under %s; downloading it", root)
        try:
            EuroSAT(str(root), download=True)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; md5 mismatch a RuntimeError
            reason = " ".join(str(exc).split())  # the CLI prints one line
            raise DataError(
                f"EuroSAT is not under {show(root)} and could not be downloaded (no network? {show(reason)}); "
                f"place the extracted 2750/ folder under {show(root / 'eurosat')}/, or pass a folder path "
                "to --data instead"
            ) from exc
    return folder, f"eurosat:{root}"


def _resolve(data: str | None, data_root: str | None) -> tuple[Path, str]:
    # An empty path would resolve to the working directory (or the default cache): refuse it.
    if data is not None and not data.strip():
        raise DataError(f"--data is empty; {DATA_HELP}")
    if data_root is not None and not data_root.strip():
        raise DataError("--data-root is empty; pass the folder that holds (or will hold) eurosat/2750, "
                        "or leave it out for ~/.cache/rtdeploy/eurosat")
    if data is None or data == "sample":
        return sample_path(), "sample"
    if data == "eurosat":
        return _eurosat_folder(data_root)
    root = Path(data).expanduser().resolve()
    return root, f"folder:{root}"


# ----------------------------------------------------------------------------- datasets


class ImageTensorDataset(Dataset):
    """uint8 images [N,3,S,S] (a tensor, or any imagestore.ImageStore: a shared disk cache, files
    decoded on demand) + int64 labels; items are (normalised float [3,S,S], label)."""

    def __init__(self, images: torch.Tensor | imagestore.ImageStore, labels: torch.Tensor, *,
                 mean: Sequence[float], std: Sequence[float], augment: bool = False, seed: int = 0,
                 paths: list[str] | None = None, crop_scale: float = 1.0) -> None:
        self.store = images if isinstance(images, imagestore.ImageStore) else imagestore.TensorStore(images)
        if labels.shape != (len(self.store),):
            raise ValueError(f"labels must be [{len(self.store)}], got {tuple(labels.shape)}")
        self.labels = labels.to(torch.int64)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.crop_scale = float(crop_scale)
        self.paths = list(paths) if paths is not None else [""] * len(self.store)
        self._mean_t = torch.tensor(self.mean).view(3, 1, 1)
        self._std_t = torch.tensor(self.std).view(3, 1, 1)

    @property
    def images(self) -> torch.Tensor:
        """All images as one uint8 tensor: read into memory unless they are held there already."""
        return self.store.all()

    def __len__(self) -> int:
        return len(self.store)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _augmented(self, img: torch.Tensor, index: int) -> torch.Tensor:
        # Overhead imagery has no canonical orientation, so the 8 flips/rotations are all valid
        # views. Randomness comes from (seed, epoch, index) alone: same result for any worker count.
        rng = random.Random(_derive_seed(self.seed, self.epoch, index))
        if rng.random() < 0.5:
            img = img.flip(2)
        if rng.random() < 0.5:
            img = img.flip(1)
        img = torch.rot90(img, rng.randrange(4), dims=(1, 2))
        return self._random_crop(img, rng) if self.crop_scale < 1.0 else img

    def _random_crop(self, img: torch.Tensor, rng: random.Random) -> torch.Tensor:
        # A square crop covering a random crop_scale..1 of the area, resized back: scenes are
        # textures seen at varying extents, and on 1,470 train images (UC Merced) this scale
        # jitter is what keeps a from-scratch ResNet18 from memorising them.
        size = img.shape[-1]
        side = max(1, min(size, round(size * math.sqrt(rng.uniform(self.crop_scale, 1.0)))))
        y, x = rng.randrange(size - side + 1), rng.randrange(size - side + 1)
        patch = img[:, y:y + side, x:x + side].unsqueeze(0).float()
        out = torch.nn.functional.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False)
        return out.squeeze(0).round().clamp(0, 255).to(torch.uint8)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.store[index]
        if self.augment:
            img = self._augmented(img, index)
        return (img.float() / 255.0 - self._mean_t) / self._std_t, int(self.labels[index])

    def normalised(self) -> torch.Tensor:
        """All images, un-augmented, as one float tensor [N,3,S,S] (calibration, parity checks)."""
        return (self.images.float() / 255.0 - self._mean_t) / self._std_t


@dataclass
class Splits:
    train: ImageTensorDataset
    val: ImageTensorDataset | None
    test: ImageTensorDataset
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    img_size: int
    source: str
    skipped: list[str] = field(default_factory=list)
    scan: ScanReport = field(default_factory=ScanReport)  # entries not used (links, FIFOs, ...)
    fingerprint: str = ""  # which files are in which split (rtdeploy/fingerprint.py)
    seed: int = 0
    # How the split was drawn, so a checkpoint's own test split can be rebuilt exactly later.
    test_frac: float = 0.3
    val_frac: float = 0.0
    max_per_class: int | None = None

    @property
    def eval_split(self) -> ImageTensorDataset:
        """The split to select/evaluate on during training: val when present, else test."""
        return self.val if self.val is not None else self.test


def _derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (adjacent seeds/epochs give unrelated streams)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                workers: int = 0, shard: tuple[int, int] | None = None) -> DataLoader:
    """A DataLoader whose order (and the dataset's augmentation) depends only on (seed, epoch).

    `shard=(rank, world_size)`: this rank's part of every global batch of `batch_size` images
    (see sharded_batches); world_size 1 is the plain loader.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}")
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)  # before workers start: each worker gets a copy carrying the epoch
    if shard is not None and shard[1] > 1:
        batches = sharded_batches(len(ds), batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                                  rank=shard[0], world_size=shard[1])
        return _Loader(ds, batch_sampler=batches, num_workers=workers)
    gen = torch.Generator().manual_seed(_derive_seed(seed, epoch))
    return _Loader(ds, batch_sampler=None, batch_size=batch_size, shuffle=shuffle, generator=gen,
                   num_workers=workers)


class _Loader(DataLoader):
    """A DataLoader whose worker errors keep their one-line message.

    torch re-raises an exception from a worker process as the same type with the worker's whole
    traceback as its message; for rtdeploy's own errors (a file that became unreadable) that
    message is the user's one line, so the traceback is cut off again here."""

    def __iter__(self):
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except UserInputError as e:
                raise type(e)(_worker_message(str(e))) from None
            yield batch


def _worker_message(text: str) -> str:
    """The original message from torch's 'Caught X in DataLoader worker ... Original Traceback' text."""
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    kind, sep, message = last.partition(": ")
    return message if sep and kind.replace(".", "").replace("_", "").isalnum() else last


class _Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def sharded_batches(n: int, batch_size: int, *, shuffle: bool, seed: int, epoch: int, rank: int,
                    world_size: int) -> list[list[int]]:
    """Rank `rank`'s indices of each global batch, for data-parallel training.

    The global batches are exactly those of the one-process loader for (seed, epoch): they are
    drawn by the same DataLoader machinery over indices, so N processes see the very batches one
    process would. Each is cut into `world_size` contiguous parts differing by at most one image.
    A global batch smaller than max(2, world_size) is left out on every rank (one process skips a
    batch of one too: BatchNorm needs two images; each rank needs at least one).
    """
    gen = torch.Generator().manual_seed(_derive_seed(seed, epoch))
    out = []
    for batch in DataLoader(_Indices(n), batch_size=batch_size, shuffle=shuffle, generator=gen):
        size = len(batch)
        if size < max(2, world_size):
            continue
        lo, hi = (rank * size) // world_size, ((rank + 1) * size) // world_size
        out.append(batch[lo:hi].tolist())
    return out


# ----------------------------------------------------------------------------- splitting


def _check_settings(img_size: int, test_frac: float, val_frac: float, max_per_class, crop_scale: float) -> None:
    if not 0.0 < crop_scale <= 1.0:
        raise ConfigError(f"--crop-scale must be in (0, 1] (1 = no random crops), got {crop_scale}")
    if img_size < 8:
        raise ConfigError(f"--img-size must be >= 8, got {img_size}")
    if not 0.0 < test_frac < 1.0:
        raise ConfigError(f"--test-frac must be between 0 and 1 (exclusive), got {test_frac}")
    if not 0.0 <= val_frac < 1.0:
        raise ConfigError(f"--val-frac must be >= 0 and < 1, got {val_frac}")
    if test_frac + val_frac >= 1.0:
        raise ConfigError(f"--test-frac + --val-frac must be < 1 to leave training images, "
                          f"got {test_frac} + {val_frac}")
    if max_per_class is not None and max_per_class < 2:
        raise ConfigError(f"--max-per-class must be >= 2 (one train, one test image), got {max_per_class}")


def _check_stats(name: str, value, positive: bool) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in value)
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals) or (positive and min(vals) < MIN_STD):
        need = f"3 numbers of at least {MIN_STD:g}" if positive else "3 numbers"
        raise ConfigError(f"--{name} must be {need} (one per RGB channel), got {value}")
    return vals  # type: ignore[return-value]


def _cap_per_class(files: list[list[str]], max_per_class: int | None, seed: int) -> list[list[str]]:
    if max_per_class is None:
        return files
    gen = torch.Generator().manual_seed(_derive_seed(seed, 1))
    out = []
    for class_files in files:
        order = torch.randperm(len(class_files), generator=gen)[:max_per_class]
        out.append([class_files[i] for i in sorted(order.tolist())])
    return out


def _split_indices(labels: torch.Tensor, classes: list[str], seed: int, test_frac: float,
                   val_frac: float) -> tuple[list[int], list[int], list[int]]:
    """Stratified split: per class, a seeded permutation cut into test, val, then train."""
    gen = torch.Generator().manual_seed(seed)
    train, val, test = [], [], []
    for c, name in enumerate(classes):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)].tolist()
        n_test = max(1, math.floor(len(idx) * test_frac + 0.5))
        n_val = max(1, math.floor(len(idx) * val_frac + 0.5)) if val_frac > 0 else 0
        if len(idx) - n_test - n_val < 1:
            need = 2 + (val_frac > 0)
            raise DataError(f"class '{show(name)}' has {len(idx)} usable images, too few to split: it needs "
                            f"at least {need} (train, test{', val' if need == 3 else ''}); add images "
                            "or lower --test-frac/--val-frac")
        test += idx[:n_test]
        val += idx[n_test:n_test + n_val]
        train += idx[n_test + n_val:]
    return sorted(train), sorted(val), sorted(test)


def _channel_stats(images: torch.Tensor | imagestore.ImageStore) -> tuple[tuple, tuple]:
    """Per-channel mean/std over [0,1] pixels, streamed (exact, from uint8 histograms)."""
    store = images if isinstance(images, imagestore.ImageStore) else imagestore.TensorStore(images)
    return imagestore.channel_stats(store, _STD_FLOOR)


def load_splits(data: str | None = "sample", *, img_size: int = 64, seed: int = 0,
                test_frac: float = 0.3, val_frac: float = 0.0, data_root: str | None = None,
                augment: bool = False, mean: tuple | None = None, std: tuple | None = None,
                skip_bad_images: bool = False, max_per_class: int | None = None,
                crop_scale: float = 1.0, on_progress: Progress | None = None,
                fingerprint: str | None = None, data_cache: str = "disk") -> Splits:
    """Load a dataset and split it, stratified per class and deterministic for `seed`.

    `data`: None/"sample" (embedded UC Merced sample), "eurosat" (torchvision EuroSAT RGB under
    `data_root`), or a folder with one sub-folder per class. test_frac 0.3 follows the paper.
    With `augment`, train images get random flips and 90-degree rotations, plus random crops of
    `crop_scale`..1 of their area resized back when crop_scale < 1.
    `fingerprint`: the split a model was trained with (Splits.fingerprint then); a DataError
    names how many files differ when this data no longer gives it. `data_cache`: where decoded
    images live, "disk" (a cache file shared by processes), "memory" or "off" (see imagestore).
    Under torchrun every rank must see the same files (checked).
    """
    _check_settings(img_size, test_frac, val_frac, max_per_class, crop_scale)
    mean = _check_stats("mean", mean, positive=False) if mean is not None else None
    std = _check_stats("std", std, positive=True) if std is not None else None
    root, source = _resolve(data, data_root)
    if data_cache == "disk" and source != "sample":
        _check_cache_outside(Path(root))
    classes, files, scan = _scan_folder(root)
    files = _cap_per_class(files, max_per_class, seed)
    paths = [p for class_files in files for p in class_files]
    all_labels = [c for c, class_files in enumerate(files) for _ in class_files]
    distributed.check_same_data(_data_fingerprint(root, files) if distributed.info().enabled else "", source)
    if fingerprint is not None and not skip_bad_images:
        # Without --skip-bad-images every file is kept (or decoding fails), so the split is known
        # now: a changed folder is refused before minutes of decoding, not after.
        early = _split_fingerprint(root, classes, paths, torch.tensor(all_labels), seed, test_frac, val_frac)
        split_fingerprint.check(fingerprint, early, source)
    # The sample is small and fast to decode; caching it would only fill the user's cache.
    mode = "memory" if source == "sample" and data_cache == "disk" else data_cache
    images, kept, skipped = _load_images(paths, img_size, skip_bad_images, on_progress, mode)
    labels = torch.tensor([all_labels[i] for i in kept], dtype=torch.int64)
    kept_paths = [paths[i] for i in kept]
    train_i, val_i, test_i = _split_indices(labels, classes, seed, test_frac, val_frac)
    current = _fingerprint(root, classes, kept_paths, train_i, val_i, test_i)
    if fingerprint is not None:
        split_fingerprint.check(fingerprint, current, source)  # with bad images skipped
    if mean is None or std is None:
        train_mean, train_std = _channel_stats(images.subset(train_i))
        mean, std = mean or train_mean, std or train_std

    def subset(idx: list[int], aug: bool) -> ImageTensorDataset:
        return ImageTensorDataset(images.subset(idx), labels[idx], mean=mean, std=std, augment=aug,
                                  seed=seed, paths=[kept_paths[i] for i in idx], crop_scale=crop_scale)

    log.info("%s: %d classes, %d train / %d val / %d test images at %dpx (%d skipped)", source,
             len(classes), len(train_i), len(val_i), len(test_i), img_size, len(skipped))
    return Splits(train=subset(train_i, augment), val=subset(val_i, False) if val_i else None,
                  test=subset(test_i, False), classes=classes, mean=mean, std=std,
                  img_size=img_size, source=source, skipped=skipped, scan=scan, fingerprint=current, seed=seed,
                  test_frac=test_frac, val_frac=val_frac, max_per_class=max_per_class)


def _split_fingerprint(root: Path, classes, paths: list[str], labels: torch.Tensor, seed: int,
                       test_frac: float, val_frac: float) -> str:
    """The fingerprint of the split `paths` would get if every file decodes."""
    return _fingerprint(root, classes, paths, *_split_indices(labels, classes, seed, test_frac, val_frac))


def _fingerprint(root: Path, classes, paths: list[str], train_i, val_i, test_i) -> str:
    rel = split_fingerprint.relative_names(paths, root)
    return split_fingerprint.make(classes, {"train": [rel[i] for i in train_i], "val": [rel[i] for i in val_i],
                                            "test": [rel[i] for i in test_i]})


def check_classes(data_classes: list[str], model_classes: list[str]) -> None:
    """Raise DataError when a dataset's classes are not exactly (and in order) the model's."""
    if list(data_classes) == list(model_classes):
        return

    def listed(names: list[str]) -> str:
        return ", ".join(show(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    missing = [c for c in model_classes if c not in data_classes]
    extra = [c for c in data_classes if c not in model_classes]
    if not missing and not extra:
        diff = "the same classes in a different order"
    else:
        diff = "; ".join(part for part in (
            f"missing from the data: {listed(missing)}" if missing else "",
            f"not known to the model: {listed(extra)}" if extra else "") if part)
    raise DataError(f"dataset classes do not match the model's ({len(data_classes)} vs "
                    f"{len(model_classes)}: {diff}); pass the --data the model was trained on, "
                    "or a checkpoint trained on this data")
