"""Structured logs: every record of the `uici` loggers carries the request id and the incident
id of the work it belongs to (from context variables), as JSON when platform.yml says
`logging.format: json`. The service sets them per request; flow runs set them per incident."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "uici_request_id", default=None
)
incident_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "uici_incident_id", default=None
)

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


_default_factory = logging.getLogRecordFactory()


def _record_with_context(*args: object, **kwargs: object) -> logging.LogRecord:
    # Captured when the record is made, in the thread and task that did the work.
    record = _default_factory(*args, **kwargs)
    record.request_id = request_id_var.get()
    record.incident_id = incident_id_var.get()
    return record


if getattr(logging.getLogRecordFactory(), "__name__", "") != "_record_with_context":
    logging.setLogRecordFactory(_record_with_context)


class ContextFilter(logging.Filter):
    """Adds request_id and incident_id to each record (an explicit `extra` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "incident_id", None) is None:
            record.incident_id = incident_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(
            f"{name}={value}"
            for name in ("request_id", "incident_id")
            if (value := getattr(record, name, None))
        )
        line = super().format(record)
        return f"{line} [{ids}]" if ids else line


def configure_logging(level: str, fmt: str, stream: object = None) -> logging.Handler:
    """One handler on the `uici` logger (idempotent: a second call replaces the first)."""
    logger = logging.getLogger("uici")
    for handler in list(logger.handlers):
        if getattr(handler, "_uici", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler._uici = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


@contextlib.contextmanager
def log_context(request_id: str | None = None, incident_id: str | None = None) -> Iterator[None]:
    tokens = []
    if request_id is not None:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if incident_id is not None:
        tokens.append((incident_id_var, incident_id_var.set(incident_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
