"""Logging for every ``imagesvc`` process: one line per event, as text or as JSON.

Events carry their fields as ``extra`` (``job_id``, ``request_id``, ...): the
JSON format puts them in the object, the text format appends them as
``key=value``, so both formats carry the same facts. Celery's and Alembic's
chatter (banners, "Task ... received/succeeded", every beat) is kept at
WARNING unless the level asked for is DEBUG: our own lines say what happened.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from imagesvc.settings import Settings

TEXT_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"

# Loggers whose INFO lines are noise to an operator; DEBUG shows them again.
QUIET_LOGGERS = ("celery", "kombu", "amqp", "alembic", "aiohttp.server")
# ...except the worker's "<name> ready." and the scheduler's "beat: Starting..." lines,
# which say they are at work; the scheduler's line per sweep it sends is dropped.
READY_LOGGERS = ("celery.apps.worker", "celery.beat")
ROUTINE_MESSAGES = ("Scheduler: Sending due task",)

# An event's fields, passed as ``extra``.
Fields = dict[str, Any]
# This process's id, as LogRecord's ``process``: os.getpid is a system call, and the API
# writes a line per request. Read again in a forked child (a prefork worker).
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))
# A field's text is quoted when it holds one of these (or is empty).
_NEEDS_QUOTES = re.compile(r'[ "=]')
# Attributes every LogRecord has; anything else on a record came as ``extra``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call passed as ``extra``, in the order given."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}


class TextFormatter(logging.Formatter):
    """The classic line, with the event's fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._stamp = (-1, "")  # the last second formatted, and its text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The standard time stamp; its date and time formatted once a second, not per
        line (the API writes an access line per request)."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self._time(record.created)

    def _time(self, created: float) -> str:
        second = int(created)
        stamped, text = self._stamp
        if second != stamped:
            text = time.strftime(self.default_time_format, self.converter(second))
            self._stamp = (second, text)
        # logging's default_msec_format, of LogRecord's msecs
        return f"{text},{int((created - second) * 1000):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return _with_fields(line, event_fields(record))

    def line(self, created: float, level: str, name: str, message: str, fields: Fields) -> str:
        line = f"{self._time(created)} {_PID[0]} {name} {level} {message}"
        return _with_fields(line, fields)


def _with_fields(line: str, fields: Fields) -> str:
    for key, value in fields.items():
        line = f"{line} {key}={_text(value)}"
    return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, process, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record.created, record.levelname, record.name, record.process)
        entry["message"] = record.getMessage()
        entry.update(event_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

    def line(self, created: float, level: str, name: str, message: str, fields: Fields) -> str:
        entry = _entry(created, level, name, _PID[0])
        entry["message"] = message
        entry.update(fields)
        return json.dumps(entry, default=str)


def _entry(created: float, level: str, name: str, process: int | None) -> dict[str, Any]:
    return {
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": name,
        "process": process,
    }


# Both formatters also write a line from its parts (``line``), with no LogRecord, exactly
# as their ``format`` writes such a record: :func:`write_lines`, the API's access log, where
# a record and its handling cost more than the rest of the line, once per request.
LineFormatter = TextFormatter | JsonFormatter


class ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler :func:`configure_logging` installs: a stream, one of our formatters."""


# A line to write later: the time it happened, its message, its fields.
Line = tuple[float, str, Fields]


def write_lines(logger: logging.Logger, level: int, lines: Sequence[Line]) -> None:
    """Log ``lines`` at ``level`` on ``logger``, each with its own time and fields.

    When nothing but the service's own handler would see their records (no handler,
    filter or level between ``logger`` and the root's, as :func:`configure_logging`
    leaves them), the lines are formatted from their parts and written as that handler
    would write them, with no LogRecord, in one write; otherwise (a test's capture, a
    handler an embedding application added) each record goes the usual way."""
    if not lines or not logger.isEnabledFor(level):
        return
    sole = _sole_handler(logger, level)
    if sole is None:
        for created, message, fields in lines:
            _handle_record(logger, level, created, message, fields)
        return
    handler, formatter = sole
    name, level_name, end = logger.name, logging.getLevelName(level), handler.terminator
    text = "".join(
        formatter.line(created, level_name, name, message, fields) + end
        for created, message, fields in lines
    )
    with handler.lock or contextlib.nullcontext():
        try:  # StreamHandler.emit, and its flush under the lock already held
            stream = handler.stream  # under the lock, as setStream changes it
            stream.write(text)
            stream.flush()
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": text, "levelno": level}))


def _handle_record(
    logger: logging.Logger, level: int, created: float, message: str, fields: Fields
) -> None:
    record = logger.makeRecord(logger.name, level, "(line)", 0, message, (), None, extra=fields)
    record.created = created  # and its msecs, as LogRecord computes them
    record.msecs = int((created - int(created)) * 1000) + 0.0
    logger.handle(record)


def _sole_handler(
    logger: logging.Logger, level: int
) -> tuple[ServiceHandler, LineFormatter] | None:
    """The root's ServiceHandler and its formatter, if it alone would handle ``logger``'s
    records at ``level`` and the formatter is one of ours."""
    if logger.disabled:
        return None
    current: logging.Logger | None = logger
    while current is not None and current.parent is not None:  # up to the root
        if current.handlers or current.filters or not current.propagate:
            return None
        current = current.parent
    if current is None or current.filters or len(current.handlers) != 1:
        return None
    handler = current.handlers[0]
    if type(handler) is not ServiceHandler or handler.filters or handler.level > level:
        return None
    formatter = handler.formatter
    return (handler, formatter) if isinstance(formatter, LineFormatter) else None


class RoutineFilter(logging.Filter):
    """Drops the lines a component writes every time it does its routine work."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ROUTINE_MESSAGES)


def _text(value: object) -> str:
    if type(value) is str:  # most fields (an id, a status): no str() call
        text = value
    elif isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    elif isinstance(value, float):
        return f"{value:.3f}"
    else:
        text = str(value)
    # A value with spaces or quotes is quoted, so the line still splits into fields.
    return json.dumps(text) if not text or _NEEDS_QUOTES.search(text) else text


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Send every logger's lines to ``stream`` (stderr) in the configured format and level."""
    handler = ServiceHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    level = logging.getLevelNamesMapping()[settings.log_level]
    root.setLevel(level)
    quiet = level if level <= logging.DEBUG else max(level, logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    for name in READY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    beat = logging.getLogger("celery.beat")
    if level > logging.DEBUG and not any(isinstance(f, RoutineFilter) for f in beat.filters):
        beat.addFilter(RoutineFilter())
    logging.captureWarnings(True)  # warnings too become lines in the one format
