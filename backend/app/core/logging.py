"""structlog, configured by each process's entry point (the API app, a worker's start, the CLIs):
console lines in development, JSON lines in production.

The standard library's loggers (uvicorn, celery, sqlalchemy) go through the same processors, so every
line has a timestamp, a level and the service name, and every line passes the secret redactor.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import SecretStr

from app.config.connections import database_url
from app.config.loading import secret_fields
from app.config.settings import Settings
from app.config.urls import url_password


@dataclass
class LogRateLimiter:
    """At most one line per key per ``interval`` seconds (monotonic clock): an incident that repeats
    a thousand times a second should cost a line a second, not flood the log."""

    interval: float
    _last: dict[str, float] = field(default_factory=dict)

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True


class SecretRedactor:
    """Replace any known secret value (password, API key, DSN password) with ``***``.

    SecretStr already keeps secrets out of reprs; this is the second line of defence for the cases where
    a driver or a third-party library puts one into an exception message.
    """

    def __init__(self, secrets: list[str]) -> None:
        # Longest first so that a DSN is masked before the password inside it.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def redact(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, "***")
        return value

    def __call__(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        if not self._secrets:
            return event_dict
        for key, value in event_dict.items():
            if isinstance(value, str):
                event_dict[key] = self.redact(value)
            elif isinstance(value, BaseException):
                event_dict[key] = self.redact(repr(value))
        return event_dict


def secret_values(settings: Settings) -> list[str]:
    """Every secret string this process knows, for the redactor: each secret field's value, and the
    database password alone (it may appear without the rest of its URL)."""
    values = [
        v.get_secret_value()
        for n in secret_fields(Settings)
        if isinstance(v := getattr(settings, n), SecretStr)
    ]
    password = url_password(database_url(settings))
    return [v for v in values if v] + ([password] if password else [])


def configure_logging(settings: Settings, service: str | None = None, *, force: bool = False) -> None:
    """Install the processors and the root handler (replacing, never adding: a second call leaves one
    handler). ``force``: loggers are not cached, so a later call takes effect for them too (tests
    switch formats)."""
    redactor = SecretRedactor(secret_values(settings))
    static = {"service": service or settings.SERVICE_TYPE, "environment": settings.ENVIRONMENT}

    def add_static(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        for key, value in static.items():
            event_dict.setdefault(key, value)
        return event_dict

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_static,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.LOG_FORMAT == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # The same list instance, refilled: loggers cached under an earlier call hold a reference to it and
    # follow the new configuration (structlog.testing.capture_logs relies on the same).
    processors = structlog.get_config()["processors"]
    # filter_by_level first: a call below LOG_LEVEL returns before any processor builds the event.
    processors[:] = [
        structlog.stdlib.filter_by_level,
        *shared,
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ]
    structlog.configure(
        processors=processors,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=not force,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.LOG_LEVEL)
    # uvicorn sets its loggers' own levels (INFO by default), which would let an access line per
    # request be built and formatted whatever LOG_LEVEL says: they inherit the root's level instead.
    # `uvicorn --no-access-log` leaves uvicorn.access without handlers and not propagating; keep it so,
    # since uvicorn decides per connection whether to log from whether that logger has handlers.
    access = logging.getLogger("uvicorn.access")
    access_off = not access.propagate and not access.handlers
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).setLevel(logging.NOTSET)
        logging.getLogger(name).propagate = True
    access.propagate = not access_off
