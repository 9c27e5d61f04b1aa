"""How turnout's log lines look: ``--log-format text`` (the readable default) or ``json``.

``json`` writes one JSON object a line: ``time`` (ISO 8601, UTC, milliseconds), ``level``,
``logger``, ``message``, and the request's fields when the record carries them, as the request log
(logger ``turnout.requests``) does: ``request_id``, ``key`` (the gateway key's prefix, never the
key), ``method``, ``path``, ``model``, ``backend``, ``status``, ``outcome``, ``error``,
``tokens_in``, ``tokens_out``, ``latency_ms``, ``ttft_ms``, ``overhead_ms``, ``attempts``. A record
carries them either as ``extra={"trace": trace}`` (a `Trace`, read here, after the fact, in the
telemetry drain) or as plain ``extra`` fields of those names. Exceptions become ``exc_info``.

`RequestLog` is the telemetry sink that writes those request lines (``turnout serve`` attaches
it); the formatters only format.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import orjson

from ..errors import REDACTED, redact

__all__ = [
    "FORMATS",
    "JsonFormatter",
    "RequestLog",
    "TextFormatter",
    "configure",
    "request_line",
    "trace_fields",
]

FORMATS = ("text", "json")
#: plain ``extra`` fields copied into a JSON line when a record has them
FIELDS = (
    "request_id", "key", "method", "path", "model", "backend", "status", "outcome", "error",
    "tokens_in", "tokens_out", "latency_ms", "ttft_ms", "overhead_ms", "attempts", "stream",
)  # fmt: skip


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def trace_fields(trace: Any) -> dict[str, Any]:
    """The log fields of a finished request's `Trace` (read by attribute, so that this module
    imports nothing of turnout's)."""
    get = trace.__getattribute__
    backend = getattr(trace, "backend", None)
    end = getattr(trace, "t_end", None)
    out: dict[str, Any] = {
        "request_id": getattr(trace, "request_id", "") or None,
        "key": _prefix(getattr(trace, "key", "")),
        "method": getattr(trace, "method", "") or None,
        "path": getattr(trace, "path", "") or None,
        "model": get("model") or None,
        "backend": f"{backend}/{trace.served}" if backend else None,
        "status": getattr(trace, "status", None),
        "outcome": get("outcome"),
        "error": get("code"),
        "stream": get("stream"),
        "tokens_in": get("tokens_in"),
        "tokens_out": get("tokens_out"),
        "latency_ms": None if end is None else _ms(end - trace.t_start),
        "ttft_ms": _ms(get("ttft_s")),
        "overhead_ms": _ms(get("overhead_s")),
        "attempts": [
            {"backend": b, "model": m, "ok": ok, "error": code, "ms": _ms(s)}
            for b, m, ok, code, s, _ in get("attempts")
        ],
    }
    return {k: v for k, v in out.items() if v is not None and v != []}


def _prefix(key: Any) -> str | None:
    """A gateway key's name or prefix as logged: never more than its first 12 characters."""
    if not key:
        return None
    text = str(getattr(key, "prefix", None) or getattr(key, "name", None) or key)
    return text[:12]


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC)
        out: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace = record.__dict__.get("trace")
        if trace is not None:
            out.update(trace_fields(trace))
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """The readable default: ``HH:MM:SS.mmm LEVEL logger: message``, and the request id when the
    record has one."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"
        )
        self._cached = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # strftime once a second, not once a line
        second = int(record.created)
        cached = self._cached  # one tuple: threads that log at once read a consistent pair
        if cached[0] != second:
            cached = self._cached = (second, super().formatTime(record, datefmt))
        return cached[1]

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace = record.__dict__.get("trace")
        rid = record.__dict__.get("request_id") or getattr(trace, "request_id", "")
        return f"{line} [{rid}]" if rid else line


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A `logging.StreamHandler` that can hold its lines while a batch is logged (`held`) and
    write them with one write and one flush: the request log writes a drain's lines at once,
    not a system call each (stderr is line-buffered, or unbuffered under PYTHONUNBUFFERED)."""

    def __init__(self) -> None:
        super().__init__()
        self._held: list[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        held = self._held
        if held is None:
            super().emit(record)
            return
        try:
            held.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)

    def hold_lines(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._held is None:
                self._held = []

    def write_held(self) -> None:
        # (not `release`: that is logging.Handler's lock)
        with self.lock:  # type: ignore[union-attr]
            held, self._held = self._held, None
            if held:
                try:
                    self.stream.write("".join(held))
                    self.flush()
                except Exception:  # as StreamHandler.emit: report, never raise into the caller
                    self.handleError(logging.makeLogRecord({"msg": "(held log lines)"}))


@contextlib.contextmanager
def held(logger: logging.Logger) -> Iterator[None]:
    """Hold the lines of every `BatchingHandler` that ``logger``'s records reach, and write
    each handler's lines at once on the way out."""
    handlers: list[BatchingHandler] = []
    current: logging.Logger | None = logger
    while current is not None:
        handlers += [h for h in current.handlers if isinstance(h, BatchingHandler)]
        current = current.parent if current.propagate else None
    for handler in handlers:
        handler.hold_lines()
    try:
        yield
    finally:
        for handler in handlers:
            handler.write_held()


def configure(fmt: str = "text", level: str | int = "INFO") -> logging.Handler:
    """Send the root logger's records to stderr in ``fmt`` (replacing its handlers); uvicorn's
    loggers are made to go through the same handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = BatchingHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error"):
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True
    # uvicorn's access log stays off (turnout serve asks uvicorn for none): the request log is
    # turnout's, written from the drain. uvicorn's protocol logs an access line per response
    # whenever "uvicorn.access" has a handler, its ancestors' included, so it must not propagate.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    return handler


class RequestLog:
    """A telemetry sink writing one line a finished model request to the ``turnout.requests``
    logger (info level), from the drain's batch: a request pays for no formatting or I/O. The
    record carries the trace (``extra={"trace": trace}``), so `JsonFormatter` writes its fields
    and the text line stays short."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("turnout.requests")

    def __call__(self, batch: Any) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        log, name = self.log, self.log.name
        with held(log):  # the batch's lines in one write
            for trace in batch:
                if trace.kind is None:
                    continue
                # The record is made here rather than by Logger.info (which looks up its
                # caller's frame for every line); the line is redacted as it is built (only its
                # model name comes from the client), so the handlers' filter need not scan it.
                record = logging.LogRecord(
                    name, logging.INFO, __file__, 0, request_line(trace), None, None
                )
                record.trace = trace
                record.__dict__[REDACTED] = True
                log.handle(record)


def request_line(trace: Any) -> str:
    """The request log's text line, e.g. ``POST /v1/chat/completions model=m backend=up/m
    status=200 tokens=12+48 latency_ms=812.3 stream`` (``python chat ...`` for the Python API;
    ``error=<code>`` after a failure). The model name, the one part a client chose, is redacted
    here (turnout/errors.py), so the line needs no further redaction."""
    path = getattr(trace, "path", "")
    where = f"{getattr(trace, 'method', '') or '-'} {path}" if path else f"python {trace.kind}"
    backend = trace.backend
    end = trace.t_end
    tokens_in = "?" if trace.tokens_in is None else trace.tokens_in
    tokens_out = "?" if trace.tokens_out is None else trace.tokens_out
    status = getattr(trace, "status", None)
    line = (
        f"{where} model={redact(trace.model) if trace.model else '-'} "
        f"backend={f'{backend}/{trace.served}' if backend else '-'} "
        f"status={'-' if status is None else status} "
        f"tokens={tokens_in}+{tokens_out} "
        f"latency_ms={'-' if end is None else _ms(end - trace.t_start)}"
    )
    if trace.code is not None:
        line += f" error={trace.code}"
    return line + " stream" * bool(trace.stream)
