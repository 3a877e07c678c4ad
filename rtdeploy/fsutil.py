"""Atomic output: every file rtdeploy writes appears whole or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputError, WriteError
from .names import show


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temp file lives in the same folder so the final os.replace is atomic (same filesystem).
    An OSError while writing (disk full, folder removed) becomes a one-line WriteError.
    """
    path = Path(path)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(f"could not write {path} ({e.strerror or e}); nothing was written there: "
                         f"free disk space or choose another path") from e
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_output(path: str | os.PathLike | None, *, force: bool = True, flag: str = "--out") -> None:
    """Fail before any long work when `path` cannot be written (or exists without --force)."""
    plan_outputs(outputs={flag: path}, force=force)


def plan_outputs(inputs=(), outputs: dict | None = None, *, force: bool = False) -> dict[str, Path]:
    """Check every output of a command before any work starts (issue 10, class 6).

    `outputs` maps a flag (as the user would recognise it, e.g. "--out (its '<out>.last' file)")
    to a path or None; `inputs` are the files and folders the command reads. Refused, with a
    OutputError naming the flag: an output that is (or lies inside) an input, two outputs that are
    the same file, an existing non-regular file (directory, device, FIFO, socket; even with
    --force, since replacing /dev/null or a FIFO with a file is never meant), an existing file
    without --force, and an output whose folder is missing or unwritable. Paths are compared
    after resolving links, and by inode where both exist, so no alias slips through.
    Returns {flag: path} for the outputs given.
    """
    planned = {flag: Path(p) for flag, p in (outputs or {}).items() if p is not None}
    sources = [Path(p) for p in inputs if p is not None]
    for flag, path in planned.items():
        check_file_name(flag, path)
    seen: dict[str, str] = {}
    for flag, path in planned.items():
        for source in sources:
            if _same_or_inside(path, source):
                what = f"be written inside the input folder {show(source)}" if source.is_dir() else \
                    f"overwrite the input {show(source)}"
                raise OutputError(f"{flag} {show(path)} would {what}; write the output somewhere else")
        real = os.path.realpath(path)
        if real in seen:
            raise OutputError(f"{flag} {show(path)} is the same file as {seen[real]}; give each output its own path")
        seen[real] = flag
    for flag, path in planned.items():
        _check_one(flag, path, force)
    return planned


def check_file_name(flag: str, path: str | os.PathLike) -> Path:
    """`path` names a file ('', '.', '..' and 'folder/' do not); call before deriving other
    paths from it ('<out>.last', '<out stem>.json')."""
    text = os.fspath(path)
    name = Path(text).name
    if not text or not name or name in (".", "..") or text.endswith(("/", os.sep)):
        raise OutputError(f"{flag} {show(repr(text))} names no file (it is empty, '.' or ends in '/'); "
                          f"give a file path such as runs/model.pt")
    return Path(text)


def _check_one(flag: str, path: Path, force: bool) -> None:
    if path.is_dir():
        raise OutputError(f"{flag} {show(path)} is a directory; give a file path")
    if path.exists() and not path.is_file():
        raise OutputError(f"{flag} {show(path)} exists and is not a regular file (a device, FIFO or socket); "
                          f"give a file path")
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{flag} {show(path)} is a dangling link; remove it or choose another path")
    if path.exists() and not force:
        raise OutputError(f"{flag} {show(path)} already exists; pass --force to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{flag}: {show(parent)} is a file, not a folder; choose another path")
    if not parent.is_dir():
        raise OutputError(f"{flag}: folder {show(parent)} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{flag}: folder {show(parent)} is not writable; choose another path")


def _same_or_inside(output: Path, source: Path) -> bool:
    """True when writing `output` would replace `source` or put a file inside the folder `source`."""
    if source.is_file() and output.exists():
        try:
            if os.path.samefile(output, source):  # hard links and any other alias
                return True
        except OSError:
            pass
    real_out, real_src = os.path.realpath(output), os.path.realpath(source)
    if real_out == real_src:
        return True
    return source.is_dir() and os.path.commonpath([real_out, real_src]) == real_src
