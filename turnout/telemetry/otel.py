"""OpenTelemetry traces of finished requests, built off the request path.

With the ``otel`` extra installed and ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, `from_environ` returns a telemetry sink: the drain
hands it each batch of finished `Trace` records (every 0.5 s), and it turns each into a span for the
request (kind SERVER, named ``{operation} {model}`` as the GenAI semantic conventions name them)
with one child span per backend attempt (kind CLIENT), then hands them to the SDK's batch
processor, which sends them over OTLP/HTTP (protobuf) from its own thread. A request pays for
nothing of this but the fields its trace carries anyway.

Attributes follow the GenAI semantic conventions: ``gen_ai.operation.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` and
``output_tokens``, ``gen_ai.response.finish_reasons``, ``error.type``; turnout's own under
``turnout.*`` (request id, backend, stream, overhead, time to first token). The exporter's other
settings (headers, timeout, service name) are the SDK's ``OTEL_*`` variables.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .record import Trace

__all__ = ["OPERATIONS", "Exporter", "from_environ"]

log = logging.getLogger("turnout.telemetry")

#: turnout's kind of request -> gen_ai.operation.name
OPERATIONS = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def from_environ(environ: Mapping[str, str]) -> Exporter | None:
    """The trace exporter the environment asks for, or None (no endpoint set, or tracing
    switched off with ``OTEL_SDK_DISABLED=true``). An endpoint without the ``otel`` extra
    installed is logged once and otherwise ignored."""
    endpoint = environ.get(_ENDPOINTS[0]) or ""
    if not endpoint and environ.get(_ENDPOINTS[1]):
        endpoint = environ[_ENDPOINTS[1]].rstrip("/") + "/v1/traces"  # as the SDK does
    if not endpoint:
        return None
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
            "pip install 'turnout[otel]' to send traces"
        )
        return None
    from .. import __version__

    resource = Resource.create({"service.name": "turnout", "service.version": __version__})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return Exporter(provider)


class Exporter:
    """A telemetry sink: finished requests in, spans out (through ``provider``'s processors)."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("turnout")

    def __call__(self, batch: Sequence[Trace]) -> None:
        # perf_counter (the traces' clock) -> the wall clock spans are stamped with, in ns
        offset = time.time_ns() - int(time.perf_counter() * 1e9)
        for trace in batch:
            if trace.kind is not None:  # a request the gateway took (not a 404, a /health)
                self._span(trace, offset)

    def _span(self, trace: Trace, offset: int) -> None:
        from opentelemetry import trace as api
        from opentelemetry.trace import SpanKind, Status, StatusCode

        operation = OPERATIONS.get(trace.kind or "", trace.kind or "")
        start = offset + int(trace.t_start * 1e9)
        end = offset + int((trace.t_end or time.perf_counter()) * 1e9)
        root = self.tracer.start_span(
            f"{operation} {trace.model}".strip(),
            kind=SpanKind.SERVER,
            start_time=start,
            attributes=_attributes(trace, operation),
        )
        if trace.outcome != "ok":
            root.set_attribute("error.type", trace.code or trace.outcome)
            root.set_status(Status(StatusCode.ERROR, trace.code or trace.outcome))
        parent = api.set_span_in_context(root)
        at = start
        for i, (backend, model, ok, code, seconds, ttft) in enumerate(trace.attempts):
            if i < len(trace.starts):
                at = offset + int(trace.starts[i] * 1e9)
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": model,
                "turnout.backend": backend,
                "turnout.attempt": i + 1,
            }
            if ttft is not None:
                attrs["turnout.time_to_first_token_s"] = ttft
            child = self.tracer.start_span(
                f"{operation} {model}", parent, SpanKind.CLIENT, attrs, start_time=at
            )
            if not ok:
                child.set_attribute("error.type", code or "error")
                child.set_status(Status(StatusCode.ERROR, code or "error"))
            at += int(seconds * 1e9)
            child.end(end_time=at)
        root.end(end_time=max(end, at))

    def close(self) -> None:
        """Send what is still queued (blocks up to the exporter's timeout) and stop."""
        self.provider.shutdown()


def _attributes(trace: Trace, operation: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": trace.model,
        "turnout.stream": trace.stream,
        "turnout.outcome": trace.outcome,
    }
    if trace.request_id:
        attrs["turnout.request_id"] = trace.request_id
    if trace.backend is not None:
        attrs["turnout.backend"] = trace.backend
        attrs["gen_ai.response.model"] = trace.served
    if trace.tokens_in is not None:
        attrs["gen_ai.usage.input_tokens"] = trace.tokens_in
    if trace.tokens_out is not None:
        attrs["gen_ai.usage.output_tokens"] = trace.tokens_out
    reasons = trace.finish_reasons()
    if reasons:
        attrs["gen_ai.response.finish_reasons"] = reasons
    if trace.overhead_s is not None:
        attrs["turnout.overhead_s"] = trace.overhead_s
    if trace.ttft_s is not None:
        attrs["turnout.time_to_first_token_s"] = trace.ttft_s
    return attrs
