"""`python scripts/servers.py up|roles|down --dir .run`: the local PostgreSQL and Redis of
`make run` (`make down` stops them). The servers themselves are `harness.servers`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import psycopg

from harness.servers import HarnessError, down, roles, up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="servers.py", description="Local PostgreSQL and Redis for development."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start (or reuse) the servers; print export lines")
    start.add_argument("--dir", type=Path, default=Path(".run"), help="state directory")
    start.add_argument("--database", default="pomodoro", help="database to create and name")
    grant = commands.add_parser(
        "roles",
        help="create the least-privilege roles and users (after migrating); print export lines",
    )
    grant.add_argument("--dir", type=Path, default=Path(".run"), help="state directory")
    grant.add_argument("--database", default="pomodoro", help="database of the roles")
    stop = commands.add_parser("down", help="stop the servers")
    stop.add_argument("--dir", type=Path, default=Path(".run"), help="state directory")
    stop.add_argument("--purge", action="store_true", help="also delete their data")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            for name, value in up(args.dir, args.database).items():
                print(f"export {name}={shlex.quote(value)}")
        elif args.command == "roles":
            owner = up(args.dir, args.database)
            for name, value in roles(args.dir, owner).items():
                print(f"export {name}={shlex.quote(value)}")
        else:
            down(args.dir, purge=args.purge)
    except (HarnessError, OSError, psycopg.Error) as exc:
        print(f"servers.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
