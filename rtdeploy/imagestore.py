"""Where decoded images live: in memory, in a shared file cache, or nowhere (decoded on demand).

* "disk" (folders, the default): decoded once into a flat uint8 file [N,3,S,S] in the cache
  folder and read back a few images at a time with os.pread. The file sits in the OS page cache,
  shared by every process that reads it (torchrun ranks, DataLoader workers, later runs), so a
  process's own memory does not grow with the dataset, and a dataset larger than RAM streams
  from disk. np.memmap would share the same pages, but mapped pages count in each process's RSS
  (and grow it to the dataset's size as an epoch touches them); pread keeps them out of it.
* "memory": decoded into this process (the embedded sample, or RTDEPLOY_NO_CACHE=1).
* "off": nothing decoded up front; each image is decoded from its file when a DataLoader (and
  its workers) asks for it. For data that changes, or no room for a cache.

Under torchrun, local rank 0 of each machine writes the cache (temp file + rename) while the
others wait at a barrier, then every rank reads the same file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .errors import ConfigError, DataError
from .names import show

log = logging.getLogger(__name__)

MODES = ("disk", "memory", "off")
CACHE_VERSION = 2  # 1: one torch.save'd tensor per dataset (read whole into each process)
CHUNK_BYTES = 16 << 20  # what streaming passes (statistics, writing) hold at once
Decode = Callable[[str, int], "torch.Tensor | str"]
Progress = Callable[[int, int], None]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"--data-cache must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


# ----------------------------------------------------------------------------- stores


class ImageStore:
    """uint8 images [3,S,S] by index. Subclasses: TensorStore, FileStore, LazyStore."""

    img_size: int

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def subset(self, idx: list[int]) -> "ImageStore":
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.img_size, self.img_size)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        stop = min(stop, len(self))
        if stop <= start:
            return torch.empty(0, 3, self.img_size, self.img_size, dtype=torch.uint8)
        return torch.stack([self[i] for i in range(start, stop)])

    def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[torch.Tensor]:
        """All images in order, a bounded block at a time."""
        step = max(1, chunk_bytes // (3 * self.img_size * self.img_size))
        for start in range(0, len(self), step):
            yield self.rows(start, start + step)

    def all(self) -> torch.Tensor:
        """Every image as one tensor (small splits: calibration, parity checks)."""
        return self.rows(0, len(self))


class TensorStore(ImageStore):
    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N,3,S,S], got {images.dtype} {tuple(images.shape)}")
        self.images, self.img_size = images, images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]

    def subset(self, idx: list[int]) -> "TensorStore":
        return TensorStore(self.images[idx])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.images[start:stop]

    def all(self) -> torch.Tensor:
        return self.images


class FileStore(ImageStore):
    """Rows of a flat uint8 cache file, read with pread (no mapping, no whole-file read)."""

    def __init__(self, path: str | Path, rows, img_size: int):
        self.path, self.img_size = str(path), img_size
        self.index = np.asarray(rows, dtype=np.int64)
        self.item_bytes = 3 * img_size * img_size
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.index)

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # DataLoader workers open their own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def _read(self, row: int, count: int) -> np.ndarray:
        size = count * self.item_bytes
        raw = os.pread(self._file(), size, row * self.item_bytes)
        if len(raw) != size:
            raise ConfigError(f"the image cache {self.path} is shorter than its index; delete it (it is rebuilt)")
        return np.frombuffer(raw, dtype=np.uint8).reshape(count, 3, self.img_size, self.img_size)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self._read(int(self.index[i]), 1)[0].copy())

    def subset(self, idx: list[int]) -> "FileStore":
        return FileStore(self.path, self.index[np.asarray(idx, dtype=np.int64)], self.img_size)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        sel = self.index[start:stop]
        if len(sel) and sel[-1] - sel[0] == len(sel) - 1 and np.all(np.diff(sel) == 1):
            return torch.from_numpy(self._read(int(sel[0]), len(sel)).copy())  # one read when contiguous
        return super().rows(start, stop)

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)


class LazyStore(ImageStore):
    """Decodes each image from its file on access (in DataLoader workers when --workers > 0)."""

    def __init__(self, paths: list[str], img_size: int, decode: Decode, bad_error: Callable):
        self.paths, self.img_size, self.decode, self.bad_error = list(paths), img_size, decode, bad_error

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        out = self.decode(self.paths[i], self.img_size)
        if isinstance(out, str):
            raise self.bad_error(self.paths[i], out)
        return out

    def subset(self, idx: list[int]) -> "LazyStore":
        return LazyStore([self.paths[i] for i in idx], self.img_size, self.decode, self.bad_error)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        stop = min(stop, len(self))
        if stop <= start:
            return super().rows(start, stop)
        with ThreadPoolExecutor(_threads()) as pool:  # PIL releases the GIL while decoding
            return torch.stack(list(pool.map(self.__getitem__, range(start, stop))))


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- statistics


def channel_stats(store: ImageStore, floor: float) -> tuple[tuple, tuple]:
    """Per-channel mean/std over [0,1] pixels from per-channel histograms of the uint8 values:
    exact, streamed a bounded chunk at a time, never a float copy of the data."""
    hist = torch.zeros(3, 256, dtype=torch.float64)
    for block in store.chunks():
        for c in range(3):
            hist[c] += torch.bincount(block[:, c].reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    n = hist.sum(1).clamp_min(1)
    mean = (hist * values).sum(1) / n
    sq = (hist * values * values).sum(1) / n
    std = (sq - mean * mean).clamp_min(0).sqrt().clamp_min(floor)
    return tuple(mean.tolist()), tuple(std.tolist())


# ----------------------------------------------------------------------------- disk cache


CACHE_ENV = "RTDEPLOY_CACHE_DIR"


def cache_dir() -> Path | None:
    if os.environ.get("RTDEPLOY_NO_CACHE", "") not in ("", "0"):
        return None
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rtdeploy" / "images"


def cache_key(paths: list[str], img_size: int) -> str:
    entries = []
    for p in sorted(paths):
        st = os.stat(p)
        # mtime alone misses a file rewritten with its old mtime restored (cp -p, rsync -t, a
        # coarse-clock file system); ctime and the inode change on any rewrite and cannot be set back.
        entries.append((p, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    blob = json.dumps([CACHE_VERSION, img_size, entries]).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _cache_files(folder: Path, key: str) -> tuple[Path, Path]:
    return folder / f"{key}.u8", folder / f"{key}.json"


def _cache_open(folder: Path, key: str, paths: list[str], img_size: int):
    """(FileStore, kept, bad) when a complete cache for these files exists, else None."""
    data, meta = _cache_files(folder, key)
    try:
        info = json.loads(meta.read_text())
        kept, bad = list(info["kept"]), list(info["skipped"])
        ok = (info["version"] == CACHE_VERSION and info["img_size"] == img_size
              and _index_fits(kept, bad, paths)
              and data.stat().st_size == len(kept) * 3 * img_size * img_size)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # stale or damaged: rebuild, never stop
        log.warning("ignoring unreadable image cache %s: %s", meta, exc)
        return None
    return (FileStore(data, range(len(kept)), img_size), kept, bad) if ok else None


def _index_fits(kept, bad, paths: list[str]) -> bool:
    """The index maps row i of the data file to image kept[i]: increasing indices into `paths`,
    and the files it skipped are exactly the others. Anything else (an edited or damaged index)
    would give images the wrong labels, so the cache is rebuilt."""
    if not all(type(i) is int for i in kept) or not all(isinstance(p, str) for p in bad):
        return False
    if any(b <= a for a, b in zip(kept, kept[1:])) or (kept and not 0 <= kept[0] <= kept[-1] < len(paths)):
        return False
    chosen = set(kept)
    return [p for i, p in enumerate(paths) if i not in chosen] == bad


def _decoded_stream(paths: list[str], img_size: int, decode: Decode):
    """(index, tensor or reason) in order, decoding a bounded window ahead in threads."""
    window = max(64, _threads() * 8)
    with ThreadPoolExecutor(_threads()) as pool:
        for start in range(0, len(paths), window):
            part = paths[start:start + window]
            for j, out in enumerate(pool.map(decode, part, [img_size] * len(part))):
                yield start + j, out


def _cache_write(folder: Path, key: str, paths: list[str], img_size: int, skip_bad: bool,
                 decode: Decode, bad_error: Callable, on_progress: Progress | None) -> None:
    """Decode straight into a temp file (plain writes: nothing accumulates in memory), then
    rename data and index into place; the index is written last, so a cache is complete or absent."""
    data, meta = _cache_files(folder, key)
    folder.mkdir(parents=True, exist_ok=True)
    kept, bad = [], []
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            for i, out in _decoded_stream(paths, img_size, decode):
                if isinstance(out, str):
                    if not skip_bad:
                        raise bad_error(paths[i], out)
                    bad.append(paths[i])
                else:
                    fh.write(out.numpy().tobytes())
                    kept.append(i)
                if on_progress is not None:
                    on_progress(i + 1, len(paths))
        os.replace(tmp, data)
        text = json.dumps({"version": CACHE_VERSION, "img_size": img_size, "kept": kept, "skipped": bad})
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, meta)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _disk_images(folder: Path, paths, img_size, skip_bad, decode, bad_error, on_progress):
    if folder.exists() and not folder.is_dir():
        log.warning("%s %s is not a folder; decoding images on demand (point it at a folder)", CACHE_ENV, folder)
        return None
    key = cache_key(paths, img_size)
    # One writer per machine (each machine has its own page cache); the others wait for it.
    writer = distributed.info().local_rank == 0
    hit = _cache_open(folder, key, paths, img_size) if writer else None
    if writer and hit is None:
        try:
            _cache_write(folder, key, paths, img_size, skip_bad, decode, bad_error, on_progress)
        except OSError as exc:  # disk full, read-only cache folder: decode on demand instead
            log.warning("could not write the image cache in %s (%s); decoding images on demand", folder, exc)
    distributed.barrier()
    hit = _cache_open(folder, key, paths, img_size)
    if hit is None:
        return None
    if on_progress is not None:
        on_progress(len(paths), len(paths))
    store, kept, bad = hit
    if bad and not skip_bad:
        raise bad_error(bad[0], n_bad=len(bad))
    log.info("reading %d decoded images from the cache %s", len(kept), store.path)
    return store, kept, bad


# ----------------------------------------------------------------------------- lazy


def _lazy_images(paths, img_size, skip_bad, decode, bad_error, on_progress, probe):
    """A LazyStore over the files whose header opens (`probe(path)` -> None or the reason);
    damage past the header shows when the image is decoded. With skip_bad every file is decoded
    once here instead (and forgotten): a file whose body is damaged is skipped now, not found
    mid-training, and a file that fails later changed after the scan."""
    if skip_bad:
        def probe(path):  # noqa: F811 - the full check replaces the header probe
            out = decode(path, img_size)
            return out if isinstance(out, str) else None

        bad_error = _changed_after_scan
    kept, bad = [], []
    with ThreadPoolExecutor(_threads()) as pool:
        for i, reason in enumerate(pool.map(probe, paths)):
            if reason is not None:
                if not skip_bad:
                    raise bad_error(paths[i], reason)
                bad.append(paths[i])
            else:
                kept.append(i)
            if on_progress is not None:
                on_progress(i + 1, len(paths))
    return LazyStore([paths[i] for i in kept], img_size, decode, bad_error), kept, bad


def _changed_after_scan(path: str, reason: str = "unreadable") -> DataError:
    return DataError(f"{show(path)} decoded when the data was scanned but not now ({show(reason)}): it changed "
                     "during the run; restore or remove it and re-run")


def load_images(paths: list[str], img_size: int, skip_bad: bool, on_progress: Progress | None, mode: str, *,
                decode: Decode, decode_all: Callable, bad_error: Callable, probe: Callable):
    """(ImageStore, kept indices into `paths`, skipped paths) for `mode` (see the module doc)."""
    folder = cache_dir() if mode == "disk" else None
    if mode == "disk" and folder is None:
        mode = "memory"  # RTDEPLOY_NO_CACHE=1: decode for this run only, write nothing
    if mode == "disk":
        hit = _disk_images(folder, paths, img_size, skip_bad, decode, bad_error, on_progress)
        if hit is not None:
            return hit
        mode = "off"
    if mode == "off":
        return _lazy_images(paths, img_size, skip_bad, decode, bad_error, on_progress, probe)
    images, kept, bad = decode_all(paths, img_size, skip_bad, on_progress)
    return TensorStore(images), kept, bad
