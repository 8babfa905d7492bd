"""Command line: parse arguments, load settings, configure logging, call the library."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from psycopg.conninfo import conninfo_to_dict

from projector import __version__
from projector.commands.roles import DEFAULT_API_ROLE, DEFAULT_RUN_ROLE
from projector.core.errors import ConfigError, ConnectionLost, MissingPrivilege, ProjectorError
from projector.logs import configure_logging
from projector.settings import Settings, load_settings, pg_user
from projector.signals import stop_on_signals

log = structlog.get_logger("projector")

# Exit codes (docs/operations.md, "Commands").
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
EXIT_PRIVILEGE = 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="projector",
        description="Project pomodoros from PostgreSQL logical replication into Redis "
        "leaderboards. Configured by PROJECTOR_* environment variables "
        "(see docs/configuration.md).",
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
    roles = sub.add_parser(
        "roles",
        help="print or create least-privilege roles and Redis ACL users",
        description="Print (default) or create (--apply) the PostgreSQL roles for "
        "'projector run' (LOGIN REPLICATION, SELECT on the projected tables) and the read "
        "API (SELECT only), or with --redis the Redis ACL users (the projector may write "
        "only under PROJECTOR_KEY_PREFIX and loads the API's functions, the API may only "
        "read, call those functions (FCALL_RO) and subscribe). --apply connects with "
        "PROJECTOR_PG_DSN (a superuser) or PROJECTOR_REDIS_URL (an admin). Passwords come "
        "from the environment only: PROJECTOR_RUN_PASSWORD and PROJECTOR_API_PASSWORD; they "
        "are never printed. "
        "Safe to run again: it brings existing roles and users to exactly these grants.",
    )
    roles.add_argument(
        "--run-role",
        default=os.environ.get("PROJECTOR_RUN_ROLE", DEFAULT_RUN_ROLE),
        help=f"role and Redis user of 'projector run' (PROJECTOR_RUN_ROLE, {DEFAULT_RUN_ROLE})",
    )
    roles.add_argument(
        "--api-role",
        default=os.environ.get("PROJECTOR_API_ROLE", DEFAULT_API_ROLE),
        help=f"role and Redis user of the read API (PROJECTOR_API_ROLE, {DEFAULT_API_ROLE})",
    )
    roles.add_argument("--redis", action="store_true", help="Redis ACL users instead of roles")
    roles.add_argument(
        "--aclfile",
        action="store_true",
        help="with --redis: print lines for a Redis ACL file (aclfile) instead of commands",
    )
    roles.add_argument("--apply", action="store_true", help="create or update them now")
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
    configure_logging(settings.log_level, settings.log_format, settings.redact)
    try:
        return _dispatch(args, settings)
    except KeyboardInterrupt:
        print("projector: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        code, message = _failure(exc, settings, args.command)
        if code is None:
            raise
        print(f"projector: {settings.redact(message)}", file=sys.stderr)
        return code


def _failure(exc: Exception, settings: Settings, command: str) -> tuple[int | None, str]:
    """The exit code and the one line for a failure; None for a bug (keep its traceback)."""
    from projector.privileges import privilege_denial

    if isinstance(exc, MissingPrivilege):
        return EXIT_PRIVILEGE, str(exc)
    pg_dsn, redis_url = settings.pg_dsn, settings.redis_url
    redis_error = type(exc).__module__.startswith("redis")
    denial = privilege_denial(exc, role=_redis_user(redis_url) if redis_error else pg_user(pg_dsn))
    if denial is not None:
        return EXIT_PRIVILEGE, str(denial)
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG, str(exc)
    if isinstance(exc, ConnectionLost):
        return EXIT_UNREACHABLE, str(exc)
    if isinstance(exc, ProjectorError):
        return EXIT_FAILED, str(exc)
    return None, ""


def _redis_user(url: str) -> str:
    parts = urlsplit(url)
    return parts.username or parse_qs(parts.query).get("username", ["default"])[0]


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command == "migrate":
        from projector.commands.migrate import migrate

        applied = migrate(settings.pg_dsn, settings.publication, settings.boards)
        print(
            f"applied {len(applied)} migration(s)"
            + (f": {', '.join(applied)}" if applied else "; schema up to date")
        )
        return 0
    if command == "run":
        return _run(settings)
    if command == "status":
        from projector.commands.status import print_status

        return print_status(settings, as_json=args.json)
    if command == "replay":
        from projector.commands.replay import replay

        return replay(settings, timeout=args.timeout)
    if command == "verify":
        from projector.commands.verify import print_verify

        return print_verify(settings, as_json=args.json, everything=args.all)
    if command == "clear":
        if not args.yes:
            print(
                "projector: clear removes every key under "
                f"{settings.keys.prefix!r}; run again with --yes",
                file=sys.stderr,
            )
            return 2
        from projector.commands.clear import clear

        removed = clear(settings)
        print(f"removed {removed} key(s) under {settings.keys.prefix!r}")
        return 0
    if command == "roles":
        return _roles(args, settings)
    if command == "demo":
        return _demo(settings, args)
    raise AssertionError(command)


def _roles(args: argparse.Namespace, settings: Settings) -> int:
    from projector.commands import roles

    run = roles.grantee(
        args.run_role,
        os.environ.get(roles.RUN_PASSWORD_ENV),
        replication=True,
        option="--run-role",
    )
    api = roles.grantee(
        args.api_role,
        os.environ.get(roles.API_PASSWORD_ENV),
        replication=False,
        option="--api-role",
    )
    if run.name == api.name:
        raise ConfigError("--run-role and --api-role must differ: the API's role may not replicate")
    if args.redis:
        if args.apply:
            roles.apply_redis(settings.redis_url, settings.keys.prefix, run, api)
            print(
                f"Redis users {run.name} and {api.name} set for keys under {settings.keys.prefix!r}"
            )
        elif args.aclfile:
            print(roles.redis_aclfile(settings.keys.prefix, run, api))
        else:
            print(roles.redis_script(settings.keys.prefix, run, api))
        return EXIT_OK
    if args.apply:
        tables = roles.source_tables(settings.boards)
        database = roles.apply_postgres(settings.pg_dsn, [run, api], tables)
        print(f"roles {run.name} (replication) and {api.name} (read-only) set on {database!r}")
        return EXIT_OK
    dbname = conninfo_to_dict(settings.pg_dsn).get("dbname")
    database = str(dbname) if dbname else pg_user(settings.pg_dsn) or "postgres"
    print(roles.postgres_script(database, [run, api], roles.source_tables(settings.boards)))
    return EXIT_OK


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    import random

    from projector.commands.demo import DemoPlan, DemoWriter, people

    stop = stop_on_signals("stopping the demo writer")
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
    from projector.compatibility import check_redis
    from projector.metrics import ProjectorMetrics, serve
    from projector.worker import Worker

    stop = stop_on_signals("stopping: finishing the batch")  # before any other thread
    check_redis(settings)
    metrics = ProjectorMetrics(stale_after=settings.health_stale_seconds)
    server = serve(metrics, settings.metrics_host, settings.metrics_port)
    log.info(
        "projector starting",
        pg=settings.redacted_dsn,
        redis=settings.redacted_redis_url,
        slot=settings.slot,
        publication=settings.publication,
        timezone=settings.timezone,
        prefix=settings.keys.prefix,
        metrics=f"http://{settings.metrics_host}:{server.port}/metrics" if server else None,
    )
    try:
        Worker(settings, stop, metrics).run_forever()
    finally:
        metrics.state("stopping")
        if server is not None:
            server.close()
    return EXIT_OK
