"""Log lines for operators: JSON (one object per line, for a log pipeline) or a human-readable console format.

Every line carries the context it was written in: the request id in the API, the job id, attempt, kind, tenant and
worker in a worker. The context lives in context variables, so it follows a request or a task without being passed
around; a thread that works for a job is started in a copy of its context.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

CONTEXT_FIELDS = ("request_id", "job_id", "attempt", "kind", "tenant", "worker")
_context: contextvars.ContextVar[dict | None] = contextvars.ContextVar("gradlab_log_context", default=None)


def bind(**fields) -> contextvars.Token:
    """Add fields to the current context (None values are dropped); returns a token for ``reset``."""
    return _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})


def reset(token: contextvars.Token) -> None:
    _context.reset(token)


def current(field: str):
    return (_context.get() or {}).get(field)


class ContextFilter(logging.Filter):
    """Copies the context fields onto each record (a field set explicitly with ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the context fields, and the
    exception's traceback as one string when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str | int | float] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value if isinstance(value, (int, float, bool)) else str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """``12:00:01 INFO  worker: job claimed  job_id=… attempt=1``: the message first, then the context."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = [f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if getattr(record, k, None) is not None]
        if not extra:
            return text
        head, sep, tail = text.partition("\n")  # a traceback goes after the context
        return f"{head}  {' '.join(extra)}{sep}{tail}"


def configure(fmt: str, level: str | int = "INFO") -> None:
    """Route every logger through one stderr handler in format ``fmt`` ("json" or "console")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logging.getLogger(name).handlers.clear()  # their records reach the root handler, formatted once
        logging.getLogger(name).propagate = True
