"""``python -m api``: serve the read API with uvicorn.

Settings come from ``PROJECTOR_*`` variables; ``--host``, ``--port`` and ``--workers``
override ``PROJECTOR_API_HOST``, ``PROJECTOR_API_PORT`` and ``PROJECTOR_API_WORKERS``. Each
worker process builds its own app through the factory ``api.app:create_app``. With several
workers, their metrics meet in a fresh ``PROMETHEUS_MULTIPROC_DIR`` (removed on exit) unless
one is given. A reachable Redis older than 7.0 stops start-up with one line. What one client
can cost a worker is bounded by ``server_bounds`` (``PROJECTOR_API_MAX_*`` and timeouts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn

from api.bounded_http import HttpBounds
from api.metrics import MULTIPROC_ENV
from projector.compatibility import check_redis
from projector.core.errors import ConfigError
from projector.logs import configure_logging
from projector.settings import Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m api",
        description="Serve the pomodoro leaderboards read API (configured by PROJECTOR_* "
        "environment variables; see docs/configuration.md).",
    )
    parser.add_argument("--host", help="address to listen on (PROJECTOR_API_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (PROJECTOR_API_PORT, 8000)")
    parser.add_argument("--workers", type=int, help="worker processes (PROJECTOR_API_WORKERS, 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Validate the settings, then run uvicorn until it is stopped."""
    args = _parser().parse_args(argv)
    overrides = {
        name: value
        for name, value in (
            ("api_host", args.host),
            ("api_port", args.port),
            ("api_workers", args.workers),
        )
        if value is not None
    }
    try:
        settings = load_settings(**overrides)
        check_redis(settings, settings.api_redis)
    except ConfigError as exc:
        print(f"api: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, settings.redact)
    with _shared_metrics(settings.api_workers):
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=settings.api_host,
            port=settings.api_port,
            workers=settings.api_workers,
            access_log=False,  # the app writes its own structured access log
            log_config=None,
            server_header=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
            **server_bounds(settings),
        )
    return 0


def server_bounds(settings: Settings) -> dict[str, Any]:
    """uvicorn's options that bound what one client can cost a worker: the request head's
    size, field count and arrival time (``BoundedHttpProtocol``), open connections, idle
    keep-alive, and whose ``X-Forwarded-For`` to believe."""
    bounds = HttpBounds.of(settings)
    proxies = settings.api_trusted_proxies
    return {
        "http": bounds.protocol(),
        "limit_concurrency": settings.api_max_connections,
        "timeout_keep_alive": settings.api_keep_alive_timeout,
        # Only read by uvicorn's h11 protocol; the same bound, should it ever be chosen.
        "h11_max_incomplete_event_size": settings.api_max_header_bytes,
        "proxy_headers": proxies is not None,
        "forwarded_allow_ips": proxies,
    }


@contextmanager
def _shared_metrics(workers: int) -> Iterator[None]:
    """With several workers, a fresh directory where their metrics add up; removed after."""
    if workers <= 1 or os.environ.get(MULTIPROC_ENV):
        yield
        return
    directory = tempfile.mkdtemp(prefix="api-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
