"""Opening one image file safely (issue 10): regular files only, a pixel limit read from the
header before anything is decoded, and one readable reason for any decoder failure."""
from __future__ import annotations

import contextlib
import logging
import os
import stat
import warnings
from collections.abc import Iterator

from PIL import Image, UnidentifiedImageError

# A header may claim any size: a 160 KB PNG can declare 9000x9000 16-bit pixels (1.8 GB of RSS
# once decoded and widened, measured). Nothing here needs more than a few megapixels (images are
# resized to --img-size), so a larger image is refused from its header, before any allocation.
MAX_IMAGE_PIXELS = 25_000_000

# Pillow reports odd or damaged files on its own too: warnings (EXIF, palettes, sizes) and log
# records (TiffImagePlugin logs an error before raising). rtdeploy reports a bad image itself,
# as one line naming the file, so Pillow's extra stderr lines would only break that line.
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
logging.getLogger("PIL").setLevel(logging.CRITICAL)


def open_regular(path: str):
    """A binary file object for `path`, or OSError when it is not a regular file.

    The folder scan already skips FIFOs and devices; this closes the gap of a file replaced by
    one after the scan. O_NONBLOCK makes opening a FIFO return at once instead of waiting for a
    writer; fstat then tells what was opened, and only a regular file is ever read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file (FIFO, socket or device)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_pixels(img: Image.Image) -> None:
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{width}x{height} pixels, more than the {MAX_IMAGE_PIXELS // 1_000_000}-megapixel "
                         "limit; downscale it")


@contextlib.contextmanager
def loaded_image(path: str) -> Iterator[Image.Image]:
    """The decoded PIL image of `path`; raises whatever the checks or the decoder raise."""
    with open_regular(path) as fh, Image.open(fh) as img:
        check_pixels(img)
        img.load()
        yield img


def failure_reason(exc: Exception) -> str:
    """One line saying why a file could not be decoded (the exception type when it helps)."""
    if isinstance(exc, UnidentifiedImageError):  # its text names the file object, not the file
        return "not an image format Pillow can read, or damaged"
    text = " ".join(str(exc).split())
    if isinstance(exc, (OSError, ValueError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
