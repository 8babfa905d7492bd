"""Command line: parse arguments, load settings, configure logging, call the library."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

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
    demo = sub.add_parser(
        "demo",
        help="write demo users and pomodoros into PostgreSQL, a few per second",
        description="Act like an app: register about 50 people, then write their pomodoros "
        "into PostgreSQL (mostly now, some in the last weeks), with occasional moves and "
        "deletes, until SIGTERM/SIGINT. The first start also writes some history. Writes go "
        "to PostgreSQL only; the running projector carries them to Redis. Reconnects with "
        "backoff when PostgreSQL goes away.",
    )
    demo.add_argument(
        "--rate",
        type=_bounded(float, 0.1, 1000, "writes per second"),
        default=3.0,
        help="writes per second, 0.1 to 1000 (default 3)",
    )
    demo.add_argument(
        "--users",
        type=_bounded(int, 1, 1000, "people"),
        default=50,
        help="how many people write, 1 to 1000 (default 50)",
    )
    demo.add_argument(
        "--history",
        type=_bounded(int, 0, 1_000_000, "pomodoros"),
        default=400,
        help="pomodoros of the last five weeks written on the first start (default 400)",
    )
    demo.add_argument("--seed", type=int, help="random seed, for a repeatable run")
    return parser


def _bounded(kind: type[float] | type[int], low: float, high: float, unit: str) -> Any:
    """An argparse type: a ``kind`` number from ``low`` to ``high``, or one clear error."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be a number of {unit} from {low:g} to {high:g}, not {text!r}"
            )
        return value

    return parse


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
    if command == "demo":
        return _demo(settings, args)
    raise AssertionError(command)


def _stop_on_signals(message: str) -> threading.Event:
    """An event set by SIGTERM or SIGINT (logged with ``message``)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info(message, signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    import random

    from projector.demo import DemoPlan, DemoWriter, people

    stop = _stop_on_signals("stopping the demo writer")
    plan = DemoPlan(people(args.users), random.Random(args.seed))
    log.info("demo starting", pg=settings.redacted_dsn, rate=args.rate, users=args.users)
    writer = DemoWriter(
        settings.pg_dsn,
        plan,
        stop,
        rate=args.rate,
        history=args.history,
        max_delay=settings.reconnect_max_delay,
    )
    writer.run()
    return 0


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
