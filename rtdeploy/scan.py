"""Which entries of a class-folder dataset are images, and under which class (issue 10).

The rule, for a data folder given as --data:

* A class is a visible sub-folder of the data folder, or a link to a folder (anywhere: linking
  class folders in is how a subset of a larger dataset is built without copying). Two classes may
  not be the same real folder, and no class may hold another or the data folder itself (the
  labels would be ambiguous): that is refused. A class name must be printable (no newline, tab,
  escape or undecodable byte), because it is written into checkpoints, ONNX files and tables.
* Inside a class folder, links are followed, but an image's label is the class whose real
  folder holds its real path: a link that leads out of its class folder (to '..', to another
  class, outside the data folder) is skipped and counted, never used.
* Every real folder is visited once and every real file is used once (keyed by device and
  inode), so links to '.', link loops and hard links cannot repeat images or loop forever.
* Class folders are read recursively (like torchvision's ImageFolder): class_0/sub/x.png is a
  class_0 image. But a class folder with no images of its own is suspect: when two or more class
  folders hold no images directly, only the same set of two or more image sub-folders (the
  layout data/{train,test}/<class>/), --data points one level too high and it is refused; any
  other class whose images are all in sub-folders gets a one-line note.
* Only regular files are ever opened. FIFOs, sockets and devices are skipped and counted, so are
  broken links and entries that cannot be listed or stat'ed. Hidden names ('.x') are ignored.
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .names import show

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")

# reason key -> how a count of them reads in a message
REASONS = {
    "special": "not a regular file (FIFO, socket or device)",
    "broken": "broken link",
    "outside": "link leading out of its class folder",
    "repeat": "second path to a folder or file already used (link or hard link)",
    "unreadable": "could not be listed or stat'ed",
}


@dataclass
class ScanReport:
    """Entries that were skipped, per reason (see REASONS), with their paths."""

    skipped: dict[str, list[str]] = field(default_factory=dict)
    ignored: int = 0  # regular files without an image extension (notes, .txt, ...)
    nested_only: list[str] = field(default_factory=list)  # classes whose images are all in sub-folders

    def add(self, reason: str, path: str) -> None:
        self.skipped.setdefault(reason, []).append(path)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self) -> str:
        """One line: 'skipped 3 entries: 2 broken link (e.g. a/b.jpg), 1 ...'; '' when none."""
        if not self.count:
            return ""
        parts = [f"{len(paths)} {REASONS[reason]} (e.g. {show(paths[0])})"
                 for reason, paths in sorted(self.skipped.items())]
        return f"skipped {self.count} data folder entries: " + "; ".join(parts)


def is_hidden(name: str) -> bool:
    return name.startswith(".")  # .DS_Store, ._foo.jpg (macOS), .ipynb_checkpoints


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _stat(path: str, report: ScanReport, is_link: bool) -> os.stat_result | None:
    try:
        return os.stat(path)  # follows links
    except OSError:  # dangling, a link loop (ELOOP), no permission
        report.add("broken" if is_link else "unreadable", path)
        return None


def _entries(folder: str, report: ScanReport) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not is_hidden(e.name)), key=lambda e: e.name)
    except OSError:
        report.add("unreadable", folder)
        return []


@dataclass
class _Seen:
    dirs: set = field(default_factory=set)
    files: set = field(default_factory=set)


def _visit(entry: os.DirEntry, class_real: str, seen: _Seen, report: ScanReport,
           found: list[str], stack: list[str]) -> None:
    """Sort one entry of a class (sub-)folder into found images, folders to walk, or skipped."""
    link = entry.is_symlink()
    st = _stat(entry.path, report, link)
    if st is None:
        return
    if link and not _inside(os.path.realpath(entry.path), class_real):
        report.add("outside", entry.path)
        return
    key = (st.st_dev, st.st_ino)
    if stat.S_ISDIR(st.st_mode):
        if key in seen.dirs:
            report.add("repeat", entry.path)
        else:
            seen.dirs.add(key)
            stack.append(entry.path)
    elif not stat.S_ISREG(st.st_mode):
        report.add("special", entry.path)
    elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
        report.ignored += 1
    elif key in seen.files:
        report.add("repeat", entry.path)
    else:
        seen.files.add(key)
        found.append(entry.path)


def class_files(folder: str, seen: _Seen, report: ScanReport) -> list[str]:
    """Image files under one class folder (recursively, like ImageFolder), sorted."""
    real = os.path.realpath(folder)
    st = os.stat(folder)
    seen.dirs.add((st.st_dev, st.st_ino))
    found: list[str] = []
    stack = [folder]
    while stack:  # iterative: a deep tree cannot hit the recursion limit
        for entry in _entries(stack.pop(), report):
            _visit(entry, real, seen, report, found, stack)
    return sorted(found)


def _class_entries(root: Path, report: ScanReport) -> list[str]:
    """Names of the class folders of `root` (sorted like torchvision's ImageFolder)."""
    names = []
    for entry in _entries(str(root), report):
        st = _stat(entry.path, report, entry.is_symlink())
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode):
            names.append(entry.name)
        elif not stat.S_ISREG(st.st_mode):
            report.add("special", entry.path)
    return names


def _check_names(root: Path, classes: list[str]) -> None:
    for name in classes:
        if not name.isprintable():
            raise DataError(f"class folder {show(name)} in {show(root)} has a control or undecodable "
                            "character in its name (it would be written into checkpoints and tables); "
                            "rename the folder")


def _check_distinct(root: Path, classes: list[str]) -> None:
    """Refuse classes that are one real folder, or that hold each other or the data folder."""
    root_real = os.path.realpath(root)
    by_real: dict[str, str] = {}
    for name in classes:
        real = os.path.realpath(root / name)
        if _inside(root_real, real):
            raise DataError(f"class folder {show(root / name)} is a link to the data folder or above it; "
                            "remove the link (each class needs its own folder)")
        if real in by_real:
            _overlap(root, name, by_real[real], "the same folder as")
        by_real[real] = name
    for real, name in by_real.items():  # a class inside another: look up each real parent
        parent = os.path.dirname(real)
        while parent != os.path.dirname(parent):
            if parent in by_real:
                _overlap(root, name, by_real[parent], "inside")
            parent = os.path.dirname(parent)


def _overlap(root: Path, name: str, other: str, how: str):
    raise DataError(f"class folder {show(root / name)} is {how} class folder {show(root / other)} "
                    "(through a link), so its images would get two labels; remove the link")


def _image_subfolders(folder: str, found: list[str]) -> set[str] | None:
    """Names of the immediate sub-folders of `folder` holding its images; None if it holds some itself."""
    subs = set()
    for path in found:
        rel = os.path.relpath(path, folder).split(os.sep)
        if len(rel) == 1:
            return None
        subs.add(rel[0])
    return subs


def _check_nesting(root: Path, classes: list[str], files: list[list[str]], report: ScanReport) -> None:
    """Refuse data/{train,test}/<class>/ given as --data (it would train 'train' against 'test');
    note classes whose images are all in sub-folders (read recursively, maybe not meant)."""
    nested = {c: subs for c, found in zip(classes, files)
              if found and (subs := _image_subfolders(str(root / c), found)) is not None}
    groups: dict[frozenset, list[str]] = {}
    for c, subs in nested.items():
        if len(subs) >= 2:
            groups.setdefault(frozenset(subs), []).append(c)
    for subs, owners in groups.items():
        if len(owners) >= 2:
            inner = ", ".join(sorted(subs)[:3]) + (", ..." if len(subs) > 3 else "")
            raise DataError(f"class folders {show(owners[0])} and {show(owners[1])} of {show(root)} hold no images "
                            f"themselves, only the same sub-folders ({show(inner)}): they look like splits of a "
                            f"dataset, not classes; point --data at the folder whose sub-folders are the classes "
                            f"(e.g. --data {show(root / owners[0])})")
    report.nested_only = sorted(nested)


def scan_classes(root: Path) -> tuple[list[str], list[list[str]], ScanReport]:
    """Classes, each class's image files and what was skipped, following the rule above."""
    report = ScanReport()
    classes = _class_entries(root, report)
    _check_names(root, classes)
    _check_distinct(root, classes)
    seen = _Seen()
    files = [class_files(str(root / c), seen, report) for c in classes]
    _check_nesting(root, classes, files, report)
    if report.ignored:
        log.info("ignored %d non-image files in %s", report.ignored, root)
    if report.count:
        log.info("%s", report.summary())
    return classes, files, report
