"""Log sequence numbers: PostgreSQL's ``X/Y`` text form and the 64-bit integers used on the wire."""

from __future__ import annotations

import re

_LSN_RE = re.compile(r"\A([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\Z")


def parse_lsn(text: str) -> int:
    """Return the integer value of an LSN written as ``X/Y`` (hexadecimal halves)."""
    match = _LSN_RE.match(text)
    if match is None:
        raise ValueError(f"not an LSN: {text!r} (expected hexadecimal X/Y, like 16/B374D848)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    """Return the ``X/Y`` text form of an LSN."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
