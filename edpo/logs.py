"""What the workers' log lines say and where they go.

- `log_context(order_id=..., trace_id=...)`: set while one message, external task or request is
  handled (a context variable, so it follows the handling task and the tasks it starts); every
  record logged meanwhile carries those ids.
- `ContextFilter` (on the handler) puts the service, the instance and those ids on every record,
  from any logger: Faust's, aiokafka's, the Camunda client's and EDPO's own.
- `JsonFormatter` writes one JSON object per line (`EDPO_LOG_FORMAT=json`): time (ISO 8601, UTC),
  level, service, instance, logger, message, order_id and trace_id where known, exception.
  `TextFormatter`, the default, writes the same as one readable line.
- `OutageLog`: a retrying loop's failures while a server is away, told once (not a traceback a try).
- `logging_config(...)`: the `logging.config.dictConfig` the worker hands to Faust's worker, which
  sets up logging itself: a size-capped rotating file (`EDPO_LOG_MAX_MB`, `EDPO_LOG_BACKUPS`) when
  `edpo up` starts the worker, standard error when it runs in the foreground.

Imports nothing of edpo, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The ids of what is being handled; a fresh mapping per log_context (never mutated in place).
_context: ContextVar[dict[str, str]] = ContextVar("edpo_log_context", default={})  # noqa: B039 - never mutated

CONTEXT_FIELDS = ("order_id", "trace_id")


@contextlib.contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Tag every record logged inside (by this task, and tasks it starts) with these ids; empty ones are left out."""
    token = _context.set({**_context.get(), **{name: str(value) for name, value in ids.items() if value}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, str]:
    """The ids set by the innermost log_context (empty outside any)."""
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Adds service, instance, order_id and trace_id to every record a handler writes (never drops one)."""

    def __init__(self, service: str = "", instance: int | str = "") -> None:
        super().__init__()
        self.service = service
        self.instance = str(instance)

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "service", ""):
            record.service = self.service
        if not getattr(record, "instance", ""):
            record.instance = self.instance
        ids = _context.get()
        for name in CONTEXT_FIELDS:
            # An id passed with extra={...} wins over the context's.
            if not getattr(record, name, ""):
                setattr(record, name, ids.get(name, ""))
        return True


def _iso_utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "service": getattr(record, "service", ""),
            "instance": getattr(record, "instance", ""),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, "")
            if value:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`2026-11-28T18:00:00.123Z INFO [order-1] edpo.agents.order: message (order=... trace=...)`."""

    def format(self, record: logging.LogRecord) -> str:
        who = f"{getattr(record, 'service', '')}-{getattr(record, 'instance', '')}".strip("-")
        text = f"{_iso_utc(record.created)} {record.levelname} [{who}] {record.name}: {record.getMessage()}"
        ids = " ".join(f"{name.removesuffix('_id')}={getattr(record, name)}" for name in CONTEXT_FIELDS
                       if getattr(record, name, ""))
        if ids:
            text += f" ({ids})"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


FORMATTERS: dict[str, type[logging.Formatter]] = {"text": TextFormatter, "json": JsonFormatter}


class OutageLog:
    """A loop's failures while something it needs is away (the engine, the database), told once:
    a warning without traceback when they start, a reminder a minute, a line when they end.
    A loop retrying every 0.1 s used to log a traceback each time: megabytes a minute."""

    REMIND_EVERY = 60.0

    def __init__(self, log: logging.Logger, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.what = what
        self.clock = clock
        self.since: float | None = None
        self.failures = 0
        self._reminded = 0.0

    def failed(self, e: BaseException) -> int:
        """One more failure; how many in a row."""
        now = self.clock()
        self.failures += 1
        if self.since is None:
            self.since = self._reminded = now
            self.log.warning("%s failed (%s: %s); trying again until it passes", self.what, type(e).__name__, e)
        elif now - self._reminded >= self.REMIND_EVERY:
            self._reminded = now
            self.log.warning("%s still failing after %.0fs (%d failures; last: %s: %s)", self.what, now - self.since,
                             self.failures, type(e).__name__, e)
        return self.failures

    def passed(self) -> None:
        """It worked: the outage, if there was one, is over."""
        if self.since is not None:
            self.log.info("%s passes again after %.1fs (%d failures)", self.what, self.clock() - self.since,
                          self.failures)
            self.since, self.failures = None, 0


def logging_config(*, service: str, instance: int, level: str, log_format: str, log_file: Path | None = None,
                   max_bytes: int = 10 * 1024 * 1024, backups: int = 3) -> dict[str, Any]:
    """A dictConfig for one worker: every record through the context filter and the chosen format,
    to a rotating file (log_file) or to standard error."""
    if log_format not in FORMATTERS:
        raise ValueError(f"unknown log format {log_format!r}; expected one of {', '.join(FORMATTERS)}")
    handler: dict[str, Any]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = {"class": "logging.handlers.RotatingFileHandler", "filename": str(log_file),
                   "maxBytes": max_bytes, "backupCount": backups, "encoding": "utf-8"}
    else:
        handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    level_number = logging.getLevelName(level.upper())  # "info" -> 20, "warn" -> 30
    if not isinstance(level_number, int):
        raise ValueError(f"unknown log level {level!r}; expected debug, info, warning or error")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter, "service": service, "instance": instance}},
        "formatters": {"edpo": {"()": FORMATTERS[log_format]}},
        "handlers": {"default": {**handler, "level": level_number, "formatter": "edpo", "filters": ["context"]}},
        "root": {"level": level_number, "handlers": ["default"]},
    }
