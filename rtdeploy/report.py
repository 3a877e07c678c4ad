"""Turn any report (dataclass or dict) into JSON, Markdown or a rich table.

Stages return plain dataclasses; this module is the only place that formats them.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterable


def as_dict(report: Any) -> Any:
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        return dataclasses.asdict(report)
    return report


def to_json(report: Any) -> str:
    return json.dumps(as_dict(report), indent=2, default=str) + "\n"


def fmt(value: Any) -> str:
    """Human formatting: fractions as %, big ints with separators, floats to 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g} {unit}"
    return str(n)


def to_markdown(rows: Iterable[dict], columns: list[str] | None = None) -> str:
    rows = list(rows)
    if not rows:
        return ""
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _numeric(value: Any) -> bool:
    text = str(value).replace(",", "").replace("%", "").replace("x", "").strip()
    for unit in (" G", " M", " k", " ms", " s"):
        text = text.removesuffix(unit)
    try:
        float(text)
    except ValueError:
        return text in ("-", "")
    return True


def rich_table(rows: Iterable[dict], columns: list[str] | None = None, title: str | None = None):
    from rich.table import Table

    rows = list(rows)
    columns = columns or (list(rows[0]) if rows else [])
    table = Table(title=title)
    for i, c in enumerate(columns):
        numeric = i > 0 and all(_numeric(r.get(c, "")) for r in rows)
        table.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in columns])
    return table
