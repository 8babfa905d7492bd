"""Schemathesis hooks for the read API run (loaded through SCHEMATHESIS_HOOKS).

The schema cannot say that ``min_lsn`` must not be ahead of the server's WAL position (the API
answers 400 then, by design). Positive cases get their ``min_lsn`` brought below the
position the test read before the run (``PROJECTOR_TEST_SERVER_LSN``), keeping its shape;
values that are not LSNs are left alone for the negative cases.

A group's ``members`` travel comma-joined (``style: form``, ``explode: false``): a generated
value that is not a list of strings, or an item holding a comma, is no request a client can
send as such (it arrives as other, valid members), so such cases are left out.
"""

from __future__ import annotations

import os
import re
from typing import Any

import schemathesis

_LSN = re.compile(r"\A([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\Z")


@schemathesis.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    """Keep a well-formed min_lsn at or below the server's position."""
    if not query or not isinstance(query.get("min_lsn"), str):
        return query
    match = _LSN.match(query["min_lsn"])
    if match is None:
        return query
    value = (int(match.group(1), 16) << 32) | int(match.group(2), 16)
    ceiling = int(os.environ["PROJECTOR_TEST_SERVER_LSN"])
    if value > ceiling:
        value %= ceiling + 1
        query = {**query, "min_lsn": f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"}
    return query


@schemathesis.hook
def filter_query(context: Any, query: dict[str, Any] | None) -> bool:
    """Leave out ``members`` values that the comma-joined serialization cannot express."""
    if not query or "members" not in query:
        return True
    members = query["members"]
    if isinstance(members, str):
        return True  # already serialized
    return isinstance(members, list) and all(
        isinstance(item, str) and "," not in item for item in members
    )
