"""Command line: parse arguments, load settings, configure logging, call the library."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import structlog

from projector import __version__
from projector.errors import ConfigError, ConnectionLost, ProjectorError
from projector.logs import configure_logging
from projector.settings import Settings, load_settings

log = structlog.get_logger("projector")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="projector",
        description="Project pomodoros from PostgreSQL logical replication into Redis "
        "leaderboards. Configured by PROJECTOR_* environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"projector {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser(
        "migrate",
        help="apply SQL migrations and set up the publication",
        description="Apply pending migrations in order and make the publication "
        "cover the projected tables. Safe to run twice.",
    )
    sub.add_parser(
        "run",
        help="stream changes into Redis until stopped",
        description="Stream committed changes into Redis until SIGTERM/SIGINT, then "
        "finish the batch, acknowledge it and exit 0. Rebuilds Redis when it "
        "lost data.",
    )
    status = sub.add_parser(
        "status",
        help="show slot, lag, watermark and Redis health",
        description="Show the slot, lag, retained WAL, watermark, Redis "
        "health and board sizes. Exits 1 when unhealthy.",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    replay = sub.add_parser(
        "replay",
        help="rebuild Redis from a PostgreSQL snapshot",
        description="Rebuild every board from a consistent PostgreSQL "
        "snapshot. Safe while 'projector run' is running: the running "
        "projector performs the rebuild and this command shows progress.",
    )
    replay.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="give up waiting after this many seconds (default 3600)",
    )
    verify = sub.add_parser(
        "verify",
        help="compare Redis with a recomputation from PostgreSQL",
        description="Recompute boards from PostgreSQL at the position Redis "
        "is at and compare. Exits 1 on drift.",
    )
    verify.add_argument("--json", action="store_true", help="print JSON instead of text")
    verify.add_argument(
        "--all",
        action="store_true",
        help="check every board in retention, not only current and previous",
    )
    clear = sub.add_parser(
        "clear",
        help="remove every key under the prefix",
        description="Remove every Redis key under PROJECTOR_KEY_PREFIX "
        "(SCAN + UNLINK). Refuses without --yes.",
    )
    clear.add_argument("--yes", action="store_true", help="really remove the keys")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``projector`` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"projector: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        return _dispatch(args, settings)
    except ConfigError as exc:
        print(f"projector: {exc}", file=sys.stderr)
        return 2
    except ConnectionLost as exc:
        print(f"projector: {exc}", file=sys.stderr)
        return 3
    except ProjectorError as exc:
        print(f"projector: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("projector: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command == "migrate":
        from projector.migrate import migrate

        applied = migrate(settings.pg_dsn, settings.publication, settings.boards)
        print(
            f"applied {len(applied)} migration(s)"
            + (f": {', '.join(applied)}" if applied else "; schema up to date")
        )
        return 0
    if command == "run":
        return _run(settings)
    if command == "status":
        from projector.status import print_status

        return print_status(settings, as_json=args.json)
    if command == "replay":
        from projector.replay import replay

        return replay(settings, timeout=args.timeout)
    if command == "verify":
        from projector.verify import print_verify

        return print_verify(settings, as_json=args.json, everything=args.all)
    if command == "clear":
        if not args.yes:
            print(
                "projector: clear removes every key under "
                f"{settings.key_prefix!r}; run again with --yes",
                file=sys.stderr,
            )
            return 2
        from projector.clear import clear

        removed = clear(settings)
        print(f"removed {removed} key(s) under {settings.key_prefix!r}")
        return 0
    raise AssertionError(command)


def _run(settings: Settings) -> int:
    from projector.worker import Worker

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stopping: finishing the batch", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "projector starting",
        pg=settings.redacted_dsn,
        redis=settings.redacted_redis_url,
        slot=settings.slot,
        publication=settings.publication,
        timezone=settings.timezone,
        prefix=settings.key_prefix,
    )
    Worker(settings, stop).run_forever()
    return 0
