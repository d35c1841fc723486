"""Logs: one line per request and per delivery attempt, as text or JSON, with no secret in them.

Request lines carry the path without its query string: a token sent as
?token= must never reach a log. In the text format every message is escaped
(printable): a path, a header or a certificate name cannot start a line of its own
or send a terminal escape. JSON is escaped by its encoding.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time

from flask import Flask, g, request

from ..base.printable import printable
from ..config import Settings

log = logging.getLogger("quay_dispatch.http")
_EXTRA_FIELDS = ("request_id", "method", "path", "status", "outcome", "remote_addr", "duration_ms",
                 "quay_repository", "caller", "detail", "delivery_id")


class TextFormatter(logging.Formatter):
    """One line per message: control characters a client sent become visible escapes."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = printable(record.message)
        return super().formatMessage(record)


class JSONFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: getattr(record, k) for k in _EXTRA_FIELDS if getattr(record, k, None) is not None})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(settings: Settings) -> None:
    """Send the service's logs to stderr in the configured format (idempotent)."""
    logger = logging.getLogger("quay_dispatch")
    logger.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    logger.propagate = False
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    logger.addHandler(handler)


def _start() -> None:
    g.request_id = secrets.token_hex(6)
    g.started = time.monotonic()


def _finish(response):
    duration_ms = round((time.monotonic() - g.get("started", time.monotonic())) * 1000, 1)
    detail = g.get("error_detail")
    fields = {
        "request_id": g.get("request_id"),
        "method": request.method,
        "path": request.path,  # never the query string
        "status": response.status_code,
        "outcome": g.get("outcome"),
        "remote_addr": request.remote_addr,
        "duration_ms": duration_ms,
        "quay_repository": g.get("quay_repository"),
        "caller": g.get("caller"),
        "detail": detail,
    }
    log.info(
        "%s %s %s %s %.1fms from %s%s",
        request.method, request.path, response.status_code, g.get("outcome") or "-", duration_ms,
        request.remote_addr, f": {detail}" if detail else "", extra=fields,
    )
    response.headers["X-Request-Id"] = fields["request_id"]
    return response


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
