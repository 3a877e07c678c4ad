"""Split fingerprints: which files a model was trained, validated and tested on (issue 10).

compress, export, bench and eval rebuild a checkpoint's split from its seed and fractions. If
images were added to or removed from the folder since training, the same seed cuts another split
and test images silently become ones the model was trained on. So train records, per split, a
hash of the sorted relative file names plus a short digest of each name (the digests say how
many files differ, not only that they do), and the rebuild is refused when it differs.

The fingerprint is one string (it travels in checkpoint JSON and ONNX metadata, and must stay
hashable inside the ONNX `split` record):
    "fp1 classes:<hash> train:<hash>:<digests> val:<hash>:<digests> test:<hash>:<digests>"
where <digests> is base64 of the sorted 6-byte blake2b digests of the split's relative names.
"""
from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass

from .errors import CheckpointError, DataError
from .names import show

VERSION = "fp1"
SPLITS = ("train", "val", "test")
_DIGEST = 6  # bytes per name: 48 bits, so 27,000 EuroSAT names collide with odds ~1e-6


def _names_hash(names: list[str]) -> str:
    return hashlib.sha256(b"\0".join(os.fsencode(n) for n in names)).hexdigest()[:32]


def _digest(name: str) -> bytes:
    return hashlib.blake2b(os.fsencode(name), digest_size=_DIGEST).digest()


def relative_names(paths: list[str], root: str | os.PathLike) -> list[str]:
    """Paths relative to the data folder, '/'-separated: the same data moved elsewhere matches."""
    return [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]


def make(classes: list[str], splits: dict[str, list[str]]) -> str:
    """The fingerprint of `splits` ({"train": relative names, "val": ..., "test": ...})."""
    parts = [VERSION, f"classes:{_names_hash(list(classes))}"]
    for name in SPLITS:
        rel = sorted(splits.get(name, []))
        digests = b"".join(sorted(_digest(r) for r in rel))
        parts.append(f"{name}:{_names_hash(rel)}:{base64.b64encode(digests).decode()}")
    return " ".join(parts)


def _parse(text) -> dict[str, tuple[str, set[bytes]]]:
    """{"classes": (hash, set()), "train": (hash, digests), ...}; CheckpointError when damaged."""
    try:
        head, *fields = text.split(" ")
        if head != VERSION:
            raise ValueError(f"unknown version {head[:20]!r}")
        out = {}
        for item in fields:
            key, digest_hash, *rest = item.split(":")
            blob = base64.b64decode(rest[0], validate=True) if rest else b""
            if len(blob) % _DIGEST:
                raise ValueError("digest list has a partial entry")
            out[key] = (digest_hash, {blob[i:i + _DIGEST] for i in range(0, len(blob), _DIGEST)})
        if set(out) != {"classes", *SPLITS}:
            raise ValueError("missing or unknown splits")
        return out
    except (AttributeError, ValueError, IndexError) as e:
        raise CheckpointError(f"the recorded split fingerprint is damaged ({show(e)}); re-create the "
                              "checkpoint with 'rtdeploy train' (or re-export the ONNX file)") from e


@dataclass
class SplitDiff:
    """How the current split differs from the recorded one, counted in files."""

    added: int      # files in the folder now that were in no recorded split
    removed: int    # recorded files that are gone
    moved: int      # files in both, but now in another split
    leaked: int     # current test/val files that were training files

    @property
    def files(self) -> int:
        return self.added + self.removed + self.moved


def compare(recorded: str, current: str) -> SplitDiff | None:
    """None when the splits are the same, or when the classes differ (the caller's class check
    then names the real problem); else the differences in files."""
    rec, cur = _parse(recorded), _parse(current)
    if rec["classes"][0] != cur["classes"][0]:
        return None
    if all(rec[s][0] == cur[s][0] for s in SPLITS):
        return None
    where_rec = {d: s for s in SPLITS for d in rec[s][1]}
    where_cur = {d: s for s in SPLITS for d in cur[s][1]}
    both = where_rec.keys() & where_cur.keys()
    return SplitDiff(added=len(where_cur.keys() - where_rec.keys()), removed=len(where_rec.keys() - where_cur.keys()),
                     moved=sum(where_rec[d] != where_cur[d] for d in both),
                     leaked=sum(where_rec[d] == "train" and where_cur[d] != "train" for d in both))


def check(recorded, current: str, source: str) -> None:
    """Raise DataError when `source` no longer gives the recorded split."""
    if not isinstance(recorded, str):
        raise CheckpointError(f"the recorded split fingerprint is damaged (a {type(recorded).__name__}, not "
                              "text); re-create the checkpoint with 'rtdeploy train' (or re-export the ONNX file)")
    diff = compare(recorded, current)
    if diff is None:
        return
    differ = f"{diff.files} files differ" if diff.files else "the file names differ"
    raise DataError(
        f"the data ({show(source)}) no longer gives the split the model was trained with: {differ} "
        f"({diff.added} added, {diff.removed} removed, {diff.moved} now in another split; {diff.leaked} "
        "test/val images were training images), so its accuracy would be measured on the wrong images; "
        "pass the data as it was at training time, or train a new model on this data")
