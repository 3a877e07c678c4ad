"""Names and paths as they appear in messages: control characters escaped, so that an error
stays one line and a file name cannot forge a second `rtdeploy: error:` line (issue 10)."""
from __future__ import annotations


def show(value) -> str:
    """`str(value)` with every non-printable character (newline, tab, ESC, U+2028, the
    surrogates of undecodable file-name bytes) escaped the way repr() writes it."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
