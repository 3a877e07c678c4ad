"""Regenerate the embedded UC Merced sample in rtdeploy/assets/ucm_sample/.

    python benchmarks/make_sample.py [SRC] [--per-class 40] [--size 64]

SRC is the full UC Merced Land Use set, one folder per class (default ../shared/data/ucmerced,
relative to the repository root). Takes the first K images of each class in sorted filename
order, shrinks them to SIZE x SIZE (Lanczos, antialiased) and writes lossy WebP (quality 90,
method 6) plus a README.md. The output depends only on the inputs and the arguments.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "rtdeploy" / "assets" / "ucm_sample"
MAX_BYTES = 8 * 1024 * 1024
SOURCE_EXTENSIONS = (".webp", ".tif", ".tiff", ".png", ".jpg", ".jpeg")

README = """\
# Embedded UC Merced sample

The default dataset of `rtdeploy` (`--data sample`): {n_classes} classes x {per_class} images =
{n_images} images, {size}x{size} RGB WebP, {total_kb:.0f} KiB in all.

## Source

UC Merced Land Use dataset (21 land-use classes, 100 aerial images each, 256x256 at 1 ft/pixel),
cut from USGS National Map Urban Area Imagery, which is in the public domain.

Cite: Yi Yang and Shawn Newsam, "Bag-Of-Visual-Words and Spatial Extensions for Land-Use
Classification", ACM SIGSPATIAL International Conference on Advances in Geographic Information
Systems (ACM GIS), 2010.

## How it was made

    python benchmarks/make_sample.py ../shared/data/ucmerced --per-class {per_class} --size {size}

For each class: the first {per_class} images in sorted filename order, converted to RGB, resized
to {size}x{size} with Pillow's Lanczos filter (antialiased; the few off-size originals such as
247x247 are resized, not cropped), saved as WebP quality 90, method 6, without metadata.

It is a small smoke-test and demo set, not a benchmark: results on it are not comparable with
the paper's (which uses all 2,100 images at full resolution).

## Counts

| class | images |
|---|---|
{rows}
| **total** | **{n_images}** |
"""


def _class_images(folder: Path, per_class: int) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SOURCE_EXTENSIONS)
    if len(files) < per_class:
        sys.exit(f"error: {folder} has {len(files)} images, fewer than --per-class {per_class}")
    return files[:per_class]


def _shrink(src: Path, dst: Path, size: int) -> int:
    with Image.open(src) as img:
        small = img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    small.save(dst, "WEBP", quality=90, method=6)
    return dst.stat().st_size


def _clear(out: Path) -> None:
    """Remove a previous sample (only folders of .webp files and the README) so no file lingers."""
    if not out.exists():
        return
    for child in out.iterdir():
        if child.is_dir() and all(f.suffix == ".webp" for f in child.iterdir()):
            shutil.rmtree(child)
        elif child.name == "README.md":
            child.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", type=Path, default=REPO / ".." / "shared" / "data" / "ucmerced")
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    src = args.src.resolve()
    classes = sorted(d.name for d in src.iterdir() if d.is_dir()) if src.is_dir() else []
    if not classes:
        sys.exit(f"error: {src} is not a folder of class sub-folders (UC Merced Land Use)")
    _clear(args.out)
    total, rows = 0, []
    for name in classes:
        (args.out / name).mkdir(parents=True, exist_ok=True)
        for f in _class_images(src / name, args.per_class):
            total += _shrink(f, args.out / name / f"{f.stem}.webp", args.size)
        rows.append(f"| {name} | {args.per_class} |")
    n_images = len(classes) * args.per_class
    readme = README.format(n_classes=len(classes), per_class=args.per_class, size=args.size,
                           n_images=n_images, total_kb=total / 1024, rows="\n".join(rows))
    (args.out / "README.md").write_text(readme)
    print(f"wrote {n_images} images ({len(classes)} classes) to {args.out}: {total / 2**20:.2f} MiB")
    if total >= MAX_BYTES:
        print(f"error: sample is {total / 2**20:.2f} MiB, over the 8 MiB budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
