"""Logging set-up: text or JSON lines, each carrying the request id of the request it serves."""

from __future__ import annotations

import atexit
import contextvars
import logging
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from logging.handlers import QueueHandler
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

    def __init__(
        self, records: queue.SimpleQueue[logging.LogRecord | None], direct: logging.Handler
    ):
        super().__init__(records)
        self._direct = direct

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == ACCESS_LOGGER:
            super().emit(record)
        else:
            self._direct.handle(record)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


# How long the writer gathers access lines before it writes them: one write (one system call,
# one wake-up that takes the GIL from the event loop) per batch rather than per request, and a
# line reaches the log at most this much later than its request ended.
BATCH_S = 0.05


class _Writer:
    """The writer thread: it waits for an access record, gathers what else arrives within
    BATCH_S, formats the lot and writes it in one call. `stop()` writes what is queued and ends
    it; stopping it twice (a test, then exit) is harmless."""

    def __init__(
        self,
        records: queue.SimpleQueue[logging.LogRecord | None],
        handler: logging.StreamHandler[IO[str]],
    ) -> None:
        self._records = records
        self._handler = handler
        self._thread = threading.Thread(target=self._run, name="access-log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._records.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._records.get()
            if first is not None:
                time.sleep(BATCH_S)
            batch = [first]
            while True:
                try:
                    batch.append(self._records.get_nowait())
                except queue.Empty:
                    break
            self._write([r for r in batch if r is not None])
            if None in batch:
                return

    def _write(self, records: list[logging.LogRecord]) -> None:
        if not records:
            return
        handler = self._handler
        lines = []
        for record in records:
            try:
                lines.append(handler.format(record) + handler.terminator)
            except Exception:
                handler.handleError(record)
        with handler.lock:  # type: ignore[union-attr]  # a StreamHandler always has its lock
            try:
                handler.stream.write("".join(lines))
                handler.flush()
            except Exception:
                handler.handleError(records[-1])


def configure_logging(level: str, fmt: str, stream: IO[str] | None = None) -> _Writer:
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
    records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
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
