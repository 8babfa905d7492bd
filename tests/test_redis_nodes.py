"""Which replies mean "this node no longer serves our keys" (followed as a failover)."""

from __future__ import annotations

import pytest
from redis._parsers.base import BaseParser

from projector.redis_nodes import moved_away


@pytest.mark.parametrize(
    ("reply", "moved"),
    [
        ("MOVED 7624 127.0.0.1:7001", True),
        ("ASK 7624 127.0.0.1:7001", True),
        ("CLUSTERDOWN The cluster is down", True),
        ("TRYAGAIN Multiple keys request during rehashing of slot", True),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", True),
        ("READONLY You can't write against a read only replica.", True),
        ("ERR WAIT cannot be used with replica instances.", False),
        ("FENCED host:1:abc", False),
        ("POSITION 0000000001", False),
        ("NOSCRIPT No matching script.", False),
    ],
)
def test_replies_redis_py_parses_are_recognised(reply: str, moved: bool) -> None:
    """redis-py turns `MOVED 7624 host:port` into MovedError("7624 host:port"): the word is
    gone, so the class must be recognised, not only the text."""
    error = BaseParser.parse_error(reply)
    assert moved_away(error) is moved
