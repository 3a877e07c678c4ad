"""Checks for values read from files (checkpoint metadata, ONNX metadata, resume state).

A file may have been edited by hand or crafted: every value is checked for its type and range
before it is used, and a bad one raises FieldError naming the field. The caller (checkpoint.py,
export/metadata.py) turns it into a one-line error naming the file as well (issue 10, class 4).
The bounds also keep a tiny file from declaring a huge allocation (class 5).
"""
from __future__ import annotations

import json
import math

from .names import show

# Input sizes rtdeploy accepts anywhere (--img-size, checkpoints, ONNX metadata). 8 px is the
# smallest a 5x-downsampling CNN still maps to a 1x1 feature map; above 2048 px one ResNet-18
# activation alone exceeds 1 GB per image, which is no longer a remote-sensing tile.
IMG_SIZE_MIN, IMG_SIZE_MAX = 8, 2048
MAX_CLASSES = 100_000        # an ImageNet-21k head; a larger list is a crafted file
MAX_SEED = 2**32 - 1         # numpy and DataLoader seeds are 32-bit
MAX_WIDTH = 1 << 16          # channels/features of one layer (VGG-16's widest is 4096)
MAX_JSON_CHARS = 10_000_000  # a metadata string this long is not rtdeploy's
# Upper bounds of settings: far above any real run, low enough that no flag can ask for an
# allocation or loop that never ends (2**70 epochs, a batch of a billion images).
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_WORKERS = 256
MAX_LR = 100.0
MAX_WEIGHT_DECAY = 10.0
MAX_IMAGES = 10**7           # --calib-images, --parity-images: more than any dataset decoded in memory


class FieldError(ValueError):
    """`field` holds `value`, which is not `expected`."""

    def __init__(self, field: str, expected: str, value):
        self.field = field
        super().__init__(f"{field} must be {expected}, got {brief(value)}")


def brief(value, limit: int = 60) -> str:
    """A short, one-line rendering of a bad value for a message."""
    try:
        text = json.dumps(value) if not isinstance(value, str) else repr(value)
    except (TypeError, ValueError):
        text = f"a {type(value).__name__}"
    text = show(text)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_json(text, field: str):
    """JSON bounded in size and nesting (json recurses per level). NaN/Infinity parse, and the
    field checks refuse them by name."""
    if not isinstance(text, str) or len(text) > MAX_JSON_CHARS:
        raise FieldError(field, f"a JSON string under {MAX_JSON_CHARS} characters",
                         text if not isinstance(text, str) else f"{len(text)} characters")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise FieldError(field, "valid JSON", text) from e


def integer(value, field: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise FieldError(field, f"an integer in {low}..{high}", value)
    return value


def integer_text(text, field: str, low: int, high: int) -> int:
    """An integer stored as a decimal string (ONNX metadata values are strings)."""
    if not isinstance(text, str) or not text.strip().lstrip("-").isdigit() or len(text) > 24:
        raise FieldError(field, f"an integer in {low}..{high}", text)
    return integer(int(text), field, low, high)


def number(value, field: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> float:
    ok = (type(value) in (int, float) and math.isfinite(value)
          and (value > low if low_open else value >= low) and (value < high if high_open else value <= high))
    if not ok:
        brackets = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
        raise FieldError(field, f"a finite number in {brackets}", value)
    return float(value)


def text(value, field: str, *, empty: bool = True, limit: int = 4096) -> str:
    if isinstance(value, str) and len(value) > limit:  # say so: "must be a string" would mislead
        raise FieldError(field, f"at most {limit} characters long", f"{len(value)} characters")
    if not isinstance(value, str) or (not empty and not value):
        raise FieldError(field, "a non-empty string" if not empty else "a string", value)
    return value


def img_size(value, field: str) -> int:
    return integer(value, field, IMG_SIZE_MIN, IMG_SIZE_MAX)


def class_names(value, field: str) -> list[str]:
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_CLASSES:
        raise FieldError(field, f"a list of 2..{MAX_CLASSES} class names", value)
    for name in value:
        text(name, f"{field} entry", empty=False, limit=1024)
        if not name.isprintable():  # as for data class folders (rtdeploy/scan.py): a newline or
            # escape in a name would be printed by info/eval tables and could forge a line
            raise FieldError(f"{field} entry", "a name without control characters", name)
    if len(set(value)) != len(value):
        raise FieldError(field, "a list of distinct class names", value)
    return list(value)


def rgb_triple(value, field: str, *, positive: bool) -> tuple[float, float, float]:
    """mean or std: three finite numbers (std: at least MIN_STD), one per RGB channel.

    Images are normalised in float32: a std such as 1e-300 is 0 there, so every input became
    inf/NaN and eval, export and bench measured garbage without a word."""
    low = MIN_STD if positive else -1e6
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise FieldError(field, "a list of 3 numbers (one per RGB channel)", value)
    return tuple(number(v, f"{field} entry", low, 1e6) for v in value)  # type: ignore[return-value]


MIN_STD = 1e-6  # pixels are in [0, 1]; 1/std stays far inside float32


def dict_of(value, field: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise FieldError(field, "a mapping with string keys", value)
    return value


def list_of_dicts(value, field: str) -> list[dict]:
    if not isinstance(value, list):
        raise FieldError(field, "a list", value)
    for entry in value:
        dict_of(entry, f"{field} entry")
    return value


def known_keys(value: dict, field: str, allowed) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise FieldError(field, f"a mapping with keys among {', '.join(sorted(allowed))}",
                         f"unknown key {unknown[0]!r}")


# ---------------------------------------------------------------- the training split

def _opt_per_class(value, field):
    return None if value is None else integer(value, field, 2, 10**9)


# Keys of a recorded split (train history, ONNX rtdeploy.split) -> their check. Everything here is
# passed to data.load_splits, so an unknown key would be an unexpected keyword there.
SPLIT_FIELDS = {
    "seed": lambda v, f: integer(v, f, 0, MAX_SEED),
    "test_frac": lambda v, f: number(v, f, 0.0, 1.0, low_open=True, high_open=True),
    "val_frac": lambda v, f: number(v, f, 0.0, 1.0, high_open=True),
    "max_per_class": _opt_per_class,
    # the split's file-list fingerprint (rtdeploy/fingerprint.py); 8 base64 chars per file name
    "fingerprint": lambda v, f: text(v, f, empty=False, limit=64 << 20),
}


def split(value, field: str) -> dict:
    dict_of(value, field)
    known_keys(value, field, SPLIT_FIELDS)
    return {k: SPLIT_FIELDS[k](v, f"{field}.{k}") for k, v in value.items()}


# ---------------------------------------------------------------- settings (CLI flags, configs)

def flag_value(flag: str, value, low, high, *, integer: bool = False, low_open: bool = False,
               high_open: bool = False):
    """`value` of option `flag` if it is a finite number (an integer with `integer`) in range;
    else ConfigError naming the flag and the range. Used by the CLI at parse time and by the
    config dataclasses, so a library caller is refused the same way (issue 10, class 7)."""
    from .errors import ConfigError

    if value is None:
        return value
    kind_ok = type(value) is int if integer else type(value) in (int, float) and math.isfinite(value)
    in_range = kind_ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not in_range:
        if integer:
            expected = f"an integer in {low}..{high}"
        else:
            expected = "a finite number in " + ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")
        shown = show(value) if len(str(value)) <= 30 else show(str(value)[:30]) + "..."
        raise ConfigError(f"{flag} must be {expected}, got {shown}")
    return value
