"""The read API's Redis Functions: the only code the API's Redis user may run.

The projector loads this library (``FUNCTION LOAD REPLACE``) whenever it claims Redis: at
the start of every streaming session and before every rebuild's swap, so a Redis that
restarted empty has it again before its new watermark appears. The API calls its functions
with ``FCALL_RO`` (each flagged ``no-writes``) and may run nothing else: its ACL user has
neither ``EVAL_RO`` (any code, e.g. an endless loop that leaves Redis answering BUSY) nor
``FUNCTION LOAD``.

Functions, not ``SCRIPT LOAD``ed scripts: Redis 7 replicates and persists functions (RDB,
AOF, ``WAIT`` covers them) but not the script cache, which every replica and every restarted
node would have to be given by someone the API's user must not be. So a replica the API reads
from (``PROJECTOR_API_READ_FROM_REPLICAS``), a replica promoted by Sentinel or a Cluster
failover, and a node restarted from its own files all hold the library the projector loaded
on the master. In a Cluster the projection lives in one hash slot, so loading it on that
slot's master is enough (a slot moved to another master moves the projector there too, whose
next session loads it). Every name carries a hash of the code: a projector of another version
loads its own library beside this one, and an API never calls code it was not written for.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any, Final

_BODY = resources.files("projector").joinpath("read_functions.lua").read_text()
VERSION: Final = hashlib.sha1(_BODY.encode()).hexdigest()[:12]
LIBRARY: Final = f"leaderboard_{VERSION}"
CODE: Final = f"#!lua name={LIBRARY}\nlocal VERSION = '{VERSION}'\n{_BODY}"


def function_name(name: str) -> str:
    """The loaded name of the library's function ``name`` (board, standing, user, group,
    watch, watermark)."""
    return f"leaderboard_{name}_{VERSION}"


BOARD: Final = function_name("board")
STANDING: Final = function_name("standing")
USER: Final = function_name("user")
GROUP: Final = function_name("group")
WATCH: Final = function_name("watch")
WATERMARK: Final = function_name("watermark")


def queue_load(pipe: Any) -> None:
    """Queue the library's (re)load on ``pipe``: idempotent, atomic for its readers."""
    pipe.execute_command("FUNCTION", "LOAD", "REPLACE", CODE)


def is_missing(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis saying that an ``FCALL``ed function is not loaded."""
    return str(exc).startswith("Function not found")
