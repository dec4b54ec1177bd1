"""Logging: one line per request and per security event, as text or JSON."""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

ACCESS = logging.getLogger("conductor_api.access")
SECURITY = logging.getLogger("conductor_api.security")
_FIELDS = (
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "client",
    "event",
    "user_id",
    "session_id",
)
# The id of the request being served, so that every line logged while serving it (a security
# event, an unhandled error) can be matched with its access line.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    given = record.__dict__
    data = {field: given[field] for field in _FIELDS if field in given}
    if "request_id" not in data and (request_id := REQUEST_ID.get()) is not None:
        data["request_id"] = request_id
    return data


def _exception(record: logging.LogRecord) -> dict[str, str]:
    # The type and the stack only: an exception's message can carry what must never reach a
    # log (SQLAlchemy puts statement parameters there: password and refresh-token hashes).
    if not record.exc_info or record.exc_info[0] is None:
        return {}
    exc_type, _, tb = record.exc_info
    return {
        "exc_type": exc_type.__name__,
        "traceback": "".join(traceback.format_tb(tb)) + exc_type.__qualname__,
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
            **_exception(record),
        }
        return json.dumps(data, default=str)


# C0 and C1 control characters and DEL, as `\xNN` (`\n` and `\r` as such).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r"}


def _one_line(value: object) -> str:
    # A path is percent-decoded: `%0A` in a URL must not start a forged log line, and `%1B`
    # must not send a terminal escape sequence (erase the line, move the cursor) to whoever
    # reads the log in one.
    text = str(value)
    # Every control character is unprintable: most values (ids, numbers, paths) need
    # nothing done, and telling so costs a tenth of the substitution.
    if text.isprintable() and "\\" not in text:
        return text
    return _CONTROL.sub(
        lambda m: _ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}"), text.replace("\\", "\\\\")
    )


class TextFormatter(logging.Formatter):
    """`time level logger message key=value...`, one line per record (the stack, if any,
    on the lines after it)."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        parts = [time.replace("+00:00", "Z"), record.levelname, record.name]
        parts.append(_one_line(record.getMessage()))
        parts.extend(f"{k}={_one_line(v)}" for k, v in _fields(record).items())
        line = " ".join(parts)
        exc = _exception(record)
        return f"{line}\n{exc['traceback']}" if exc else line


# (SQLAlchemy keeps its own "sqlalchemy" logger at WARNING, and hides parameters anyway.)
_DRIVER_LOGGERS = ("aiosqlite", "asyncpg")


def configure_logging(fmt: str, level: str) -> None:
    """Route the application's and uvicorn's logs to stderr in the chosen format."""
    # Neither format shows the caller's file and line, nor the thread or process: a record
    # need not look them up (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's access log would repeat ours, without the request id.
    logging.getLogger("uvicorn.access").disabled = True
    # The database drivers log each statement with its parameters at DEBUG (password and
    # token hashes, typed usernames): LOG_LEVEL=debug is for this application's lines only.
    for name in _DRIVER_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))


def security_event(
    event: str,
    *,
    user_id: object | None,
    session_id: object | None,
    client: str | None,
    level: int = logging.INFO,
) -> None:
    """Log a security event: what, whose, which session, from where; never a credential."""
    extra = {
        "event": event,
        "user_id": None if user_id is None else str(user_id),
        "session_id": None if session_id is None else str(session_id),
        "client": client,
    }
    if (request_id := REQUEST_ID.get()) is not None:
        extra["request_id"] = request_id
    SECURITY.log(level, "security event %s", event, extra=extra)
