"""Structured JSON logs: one object per line, safe to ship to any SIEM."""

from __future__ import annotations

import atexit
import logging
import queue
import sys
import threading
import time
from typing import Any

import orjson

_STD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
# uvicorn adds a copy of its message with terminal colour codes: noise (and escape sequences) in
# a SIEM.
_SKIP = _STD | {"color_message"}


class JsonFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        """The traceback, each value the detectors find masked ([MY_NUMBER], [SECRET]).
        Python's errors quote what they choke on (``int('…')`` names the text, a KeyError its
        key), and what a defect chokes on can be a request's prompt; the frames, the types
        and the rest of the messages stay for whoever fixes the defect. A traceback that
        cannot be inspected is withheld but for its last line's exception type."""
        text = super().formatException(ei)
        try:
            return mask_values(text)
        except Exception:
            kind = ei[0].__name__ if ei and ei[0] is not None else "error"
            return f"(traceback withheld: it could not be inspected) {kind}"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _SKIP and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


_scanner: Any = None


def mask_values(text: str) -> str:
    """``text`` with every finding of the default detectors replaced by its type
    (``[MY_NUMBER]``): for what a client chose (a URL's path, an admin's parameters) before it
    is written where a security review greps and no erasure reaches (the log, the ledger).
    Raises what the scanner raises."""
    global _scanner
    from sekisho.classify import Scanner, redact  # not at import: the CLI starts faster

    if _scanner is None:
        _scanner = Scanner()
    findings = _scanner.scan(text)
    return redact(text, findings) if findings else text


class _Writer:
    """Writes log records to stderr from a thread of its own, a batch at a time.

    Logging on the event loop wrote each line to stderr there: when whatever reads stderr
    stalls (a pipe nobody drains, a container runtime's blocking log driver), every request
    stalled with it. Records now wait in a queue (formatted and written by this thread every
    ``GATHER`` seconds at most, in one write); past ``MAX_PENDING`` waiting records, new ones
    are dropped and counted, and the count is logged once writing works again. At exit what is
    queued is written (``flush``).
    """

    GATHER = 0.02
    MAX_PENDING = 100_000

    def __init__(self) -> None:
        self.formatter = JsonFormatter()
        self._queue: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
        self._pending = 0
        self._dropped = 0
        self.dropped_total = 0  # since start, never reset: sekisho_log_lines_dropped_total
        self._idle = threading.Event()
        self._idle.set()
        self.direct = False  # once no request is served any more: each line written at once
        self._direct_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sekisho-log-writer", daemon=True)
        self._thread.start()

    def put(self, record: logging.LogRecord) -> None:
        if self.direct:
            with self._direct_lock:  # one line at a time from every thread that logs
                self._pending += 1
                self._write([record])
            return
        if self._pending >= self.MAX_PENDING:
            self._dropped += 1
            self.dropped_total += 1
            return
        self._pending += 1
        self._idle.clear()
        self._queue.put(record)

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until what was queued so far is written (at most ``timeout`` seconds)."""
        if self._thread.is_alive():
            self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is not None:
                time.sleep(self.GATHER)  # gather what comes meanwhile: one write for all
            batch = [first]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write([r for r in batch if r is not None])
            if self._queue.empty():
                self._idle.set()

    def _write(self, batch: list[logging.LogRecord]) -> None:
        lines = []
        for record in batch:
            try:
                lines.append(self.formatter.format(record))
            except Exception:  # a record that cannot be formatted must not stop the others
                lines.append(orjson.dumps({"level": "error", "msg": "unformattable log record",
                                           "logger": record.name}).decode())  # fmt: skip
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            warn = logging.LogRecord("sekisho.logs", logging.WARNING, "", 0,
                                     "%d log lines dropped: stderr was not read fast enough",
                                     (dropped,), None)  # fmt: skip
            lines.append(self.formatter.format(warn))
        try:
            stream = sys.stderr
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except Exception:  # stderr closed or gone: nothing left to tell
            pass
        self._pending -= len(batch)


class _QueueHandler(logging.Handler):
    def __init__(self, writer: _Writer) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        self.writer.put(record)


_writer: _Writer | None = None


def dropped_lines() -> int:
    """Log lines dropped since start because stderr was not read fast enough."""
    return _writer.dropped_total if _writer is not None else 0


def flush() -> None:
    """Write what is queued now (before exit, or before reading the log)."""
    if _writer is not None:
        _writer.flush()


def write_directly() -> None:
    """Write what is queued, then every later line at once, on the thread that logs it: for a
    process whose requests are over. uvicorn ends a worker by raising the signal that stopped
    it again, which ends the process before the writer thread's next turn and without exit
    handlers, so its own last lines ("Application shutdown complete.", "Finished server
    process") were lost."""
    if _writer is not None:
        _writer.flush()
        _writer.direct = True


def configure(level: str = "info") -> None:
    global _writer
    if _writer is None:
        _writer = _Writer()
        atexit.register(_writer.flush)
    _writer.direct = False  # a gateway served again in this process logs from the thread again
    handler = _QueueHandler(_writer)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic announces each of its plugins and each migration step at info: seven lines at a
    # first start that say nothing an operator acts on (sekisho logs the schema it upgraded).
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
