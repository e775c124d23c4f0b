"""Logging set-up: text or JSON lines, each carrying the request id of the request it serves."""

from __future__ import annotations

import atexit
import contextvars
import logging
import queue
import sys
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import IO

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and value is not None:
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


ACCESS_LOGGER = "service.access"


class _Enqueue(QueueHandler):
    """Hands each access record to the writer thread as it is: formatting and the write happen
    there, off the event loop (an access line per request would otherwise cost a fifth of a
    memory-served request). Every other record (start-up, shutdown, warnings: rare) is written
    at once, so none is lost when the process ends by a signal. The request id is read here, in
    the request's own context."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord], direct: logging.Handler):
        super().__init__(records)
        self._direct = direct

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == ACCESS_LOGGER:
            super().emit(record)
        else:
            self._direct.handle(record)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _Writer(QueueListener):
    """The writer thread; stopping it twice (a test, then exit) is harmless."""

    def stop(self) -> None:
        if self._thread is not None:
            super().stop()


def configure_logging(level: str, fmt: str, stream: IO[str] | None = None) -> QueueListener:
    """Route every log record (the service's and uvicorn's) to one stream: access lines through a
    writer thread, the rest directly. Returns the running writer; its `stop()` writes what is
    queued and ends it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    enqueue = _Enqueue(records, handler)
    enqueue.addFilter(_RequestIdFilter())
    listener = _Writer(records, handler)
    listener.start()
    atexit.register(listener.stop)
    root = logging.getLogger()
    root.handlers = [enqueue]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # The service writes its own access log, with the request id and route.
    logging.getLogger("uvicorn.access").disabled = True
    return listener
