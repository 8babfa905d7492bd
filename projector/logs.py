"""structlog configuration shared by the CLI, the projector and the read API.

Every string in every event passes ``redact`` (the settings' password masking) before it is
rendered: an error message that quotes a DSN or URL cannot leak its password.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog


def configure_logging(
    level: str = "info", fmt: str = "console", redact: Callable[[str], str] | None = None
) -> None:
    """Route structlog and stdlib logging to stderr at ``level`` as console text or JSON lines."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *([_redactor(redact)] if redact is not None else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _redactor(redact: Callable[[str], str]) -> structlog.typing.Processor:
    def processor(
        logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = redact(value)
        return event

    return processor
