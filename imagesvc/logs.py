"""Logging for every ``imagesvc`` process: one line per event, as text or as JSON.

Events carry their fields as ``extra`` (``job_id``, ``request_id``, ...): the
JSON format puts them in the object, the text format appends them as
``key=value``, so both formats carry the same facts. Celery's and Alembic's
chatter (banners, "Task ... received/succeeded", every beat) is kept at
WARNING unless the level asked for is DEBUG: our own lines say what happened.
"""

from __future__ import annotations

import json
import logging
import sys
import time
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
        second, text = self._stamp
        if second != int(record.created):
            second = int(record.created)
            text = time.strftime(self.default_time_format, self.converter(second))
            self._stamp = (second, text)
        return f"{text},{int(record.msecs):03d}"  # logging's default_msec_format

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = " ".join(f"{k}={_text(v)}" for k, v in event_fields(record).items())
        return f"{line} {fields}" if fields else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, process, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
            **event_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RoutineFilter(logging.Filter):
    """Drops the lines a component writes every time it does its routine work."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ROUTINE_MESSAGES)


def _text(value: object) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    # A value with spaces or quotes is quoted, so the line still splits into fields.
    return json.dumps(text) if not text or any(c in text for c in ' "=') else text


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Send every logger's lines to ``stream`` (stderr) in the configured format and level."""
    handler = logging.StreamHandler(stream or sys.stderr)
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
