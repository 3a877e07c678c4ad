"""Names and paths as they appear in messages: always printable, always one line.

A file or folder name may hold a newline, a carriage return, an escape sequence or bytes that
are not UTF-8. Printed raw, such a name splits an error over several lines (or forges a second
`rtdeploy: error:` line, or recolours the terminal). `show` escapes them the way `repr` does.
"""
from __future__ import annotations

import os


def _escape(char: str) -> str:
    # repr's own escape for one character: '\n' -> \n, '\x1b' -> \x1b, a lone surrogate (an
    # undecodable byte of a file name, see os.fsdecode) -> \udcff, U+2028 -> \u2028.
    return repr(char)[1:-1]


def show(value) -> str:
    """`value` (str, bytes or path) with every non-printable character escaped like repr does.

    Printable text, spaces and non-ASCII letters stay as they are: show("a b/é.jpg") is unchanged.
    """
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    elif not isinstance(value, str):
        value = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        if isinstance(value, bytes):
            value = os.fsdecode(value)
    return "".join(c if c.isprintable() else _escape(c) for c in value)


def is_printable(name: str) -> bool:
    """True when `name` shows as itself (no control, format or undecodable characters)."""
    return name.isprintable()
