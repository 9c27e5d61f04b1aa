"""`Trace`: what one request asked of turnout and what it did, in one small mutable object.

Created when the request arrives (by the pipeline, so that reading and validating the body count
as turnout's time; by the gateway for the Python API), filled in by the gateway and the router as
the request runs, and handed to telemetry once, after the response: by the pipeline for an HTTP
request (``held``), whatever its fate, else by the gateway. Only attribute stores and one list
append per attempt happen on the request path.

How a request ended (``outcome``), with its reason (``code``) unless it succeeded:

- ``ok``: answered;
- ``refused``: turnout or the backend refused it for what it asked (a 4xx: invalid, too large,
  forbidden, unknown model...), reason the error's code;
- ``error``: it failed (a 5xx: no backend up, a backend's failure or timeout), reason the code;
- ``internal``: turnout itself failed on it (a bug: a 500 ``internal_error``);
- ``cancelled``: the client left before the answer was complete (``client_gone``);
- ``cut``: the shutdown grace ended it (``shutting_down``).
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from contextvars import ContextVar
from typing import Any

from ..errors import GatewayError
from ..wire.types import JSON, Kind

__all__ = ["CURRENT", "OUTCOMES", "Attempt", "Trace", "outcome_of"]

#: every outcome a request can have (module docstring)
OUTCOMES = ("ok", "refused", "error", "internal", "cancelled", "cut")
#: the HTTP status an outcome stands for when no error gave one (499: nginx's "client gone")
_STATUS = {"internal": 500, "cancelled": 499}

#: backend, model, succeeded, error code, seconds in the backend, seconds to first chunk
Attempt = tuple[str, str, bool, str | None, float, float | None]

#: the trace of the HTTP request being served (set by the pipeline in turnout/server/pipeline.py)
CURRENT: ContextVar[Trace | None] = ContextVar("turnout_trace", default=None)


class Trace:
    __slots__ = (
        "attempts",
        "backend",
        "backend_s",
        "body",
        "choices",
        "client",
        "code",
        "cost",
        "emitted",
        "error",
        "estimated",
        "first_token_timeout",
        "front",
        "held",
        "key",
        "kind",
        "latency_s",
        "method",
        "model",
        "outcome",
        "overhead_s",
        "passthrough",
        "path",
        "price_in",
        "price_out",
        "principal",
        "priority",
        "rate_headers",
        "request_id",
        "served",
        "started_call",
        "starts",
        "status",
        "stream",
        "t_end",
        "t_start",
        "ticket",
        "timeout",
        "tokens_in",
        "tokens_out",
        "ttft_s",
        "user",
        "wait_s",
        "wall",
    )

    def __init__(self, t_start: float | None = None) -> None:
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.t_end: float | None = None  # set by telemetry when the record is handed over
        self.request_id = ""  # X-Request-Id: the client's (sanitised) or the server's own
        self.method = ""  # the HTTP request's (set by the server; empty for the Python API)
        self.path = ""
        # What the client asked for (headers X-Turnout-Timeout, X-Turnout-First-Token-Timeout).
        self.timeout: float | None = None
        self.first_token_timeout: float | None = None
        self.error: GatewayError | None = None  # an override the client got wrong
        self.held = False  # the pipeline emits it when the response is over, not the gateway
        # Who asked (a hash of its key, else its address): the breaker's source of a failure.
        self.client: Hashable = None
        # What the request is; None until the gateway takes it.
        self.kind: Kind | None = None
        self.model = ""
        self.stream = False
        self.body: JSON | None = None  # kept only when usage must be estimated later
        # What the router did.
        self.attempts: list[Attempt] = []
        self.starts: list[float] = []  # perf_counter at each attempt's call, in order
        self.backend: str | None = None  # the backend that answered
        self.served = ""  # its model name
        self.passthrough = False  # it was sent the client's own request, its reply relayed
        self.price_in: float | None = None
        self.price_out: float | None = None
        self.backend_s = 0.0  # awaiting backends (to the first chunk for streams)
        self.wait_s = 0.0  # backoff, waiting for a slot or for a backend to recover
        self.started_call: float | None = None  # perf_counter of a backend call under way
        self.ttft_s: float | None = None
        # How it ended.
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None
        self.outcome = "ok"  # one of `OUTCOMES`
        self.code: str | None = None  # the reason, for any other outcome
        self.overhead_s: float | None = None
        #: the reply's choices (a stream's last chunk with choices): their finish reasons are
        #: read off the hot path, by the telemetry drain
        self.choices: Any = None
        self.status = 200  # HTTP status; 499 for a client gone
        # Access (turnout/access): who asked, and what the limits reserved for it.
        self.wall = time.time()
        self.front = "openai"
        self.principal: Any = None  # the gateway key's record, once authenticated
        self.key = ""  # its name ("" without keys): the fair queue's flow
        self.priority = 1
        self.user: str | None = None  # the end user (the body's "user", or X-Turnout-User)
        self.ticket: Any = None  # the limits' reservation, settled after the call
        self.rate_headers: list[tuple[bytes, bytes]] | None = None
        # Filled in by telemetry's drain (estimates when the backend gave no usage).
        self.cost = 0.0
        self.estimated = False
        self.latency_s = 0.0
        self.emitted = False

    def begin(self, kind: Kind, model: str, stream: bool) -> None:
        self.kind, self.model, self.stream = kind, model, stream

    def call_started(self) -> float:
        now = time.perf_counter()
        self.started_call = now
        self.starts.append(now)
        return now

    def call_ended(self, started: float) -> float:
        now = time.perf_counter()
        self.backend_s += now - started
        self.started_call = None
        return now

    def ready(self) -> None:
        """The reply is ready to go out (a stream: its first chunk): fix turnout's own share."""
        if self.overhead_s is None:
            self.overhead_s = self.overhead_now()

    def overhead_now(self) -> float:
        now = time.perf_counter()
        backend = self.backend_s
        if self.started_call is not None:
            backend += now - self.started_call
        return max(0.0, now - self.t_start - backend - self.wait_s)

    def usage(self, usage: Any, body: JSON, tokens_out: int | None = None) -> None:
        """Take the token counts of a reply's ``usage``; without them, keep the request body so
        telemetry can estimate them off the hot path (``tokens_out``: what is known already)."""
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self.tokens_in = usage["prompt_tokens"]
            self.tokens_out = usage.get("completion_tokens") or 0
        else:
            self.body = body
            if tokens_out is not None:
                self.tokens_out = tokens_out

    def finish_reasons(self) -> list[str]:
        choices = self.choices if isinstance(self.choices, list) else ()
        return [
            c["finish_reason"] for c in choices if isinstance(c, dict) and c.get("finish_reason")
        ]

    def failed(self, exc: BaseException) -> None:
        """Note how the request ended: ``exc`` a `GatewayError` (refused or failed, by its
        status), any other exception (turnout's own failure), or a cancellation (the client
        left: `asyncio.CancelledError`, or the stream closed under it)."""
        if self.outcome != "cut":  # the shutdown's cut shows up as whatever it interrupted
            self.outcome, self.code = outcome_of(exc)
            self.status = _STATUS.get(self.outcome, 500)
            if isinstance(exc, GatewayError):
                self.status = exc.status

    def cut(self) -> None:
        """The shutdown grace ended the request."""
        self.outcome, self.code, self.status = "cut", "shutting_down", 503


def outcome_of(exc: BaseException) -> tuple[str, str]:
    """The outcome and reason of a request that ended with ``exc``."""
    if isinstance(exc, GatewayError):
        return ("refused" if exc.status < 500 else "error"), exc.code or exc.type
    if isinstance(exc, Exception):
        return "internal", "internal_error"
    return "cancelled", "client_gone"  # CancelledError, GeneratorExit: nobody is listening
