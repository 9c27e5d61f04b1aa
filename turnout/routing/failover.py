"""Failover mid-stream, a route's ``stream_failover: continue``: when the backend serving a stream
dies after its first chunk (connection reset, an error event from upstream, its idle timeout
between chunks), the answer is finished by the route's next target, in the same response.

The next backend is asked for the rest of the answer:

- a text completion: the prompt plus the text produced so far, as its new prompt (an exact
  prefill: the model goes on from the last token);
- a chat: the conversation, the text so far as an assistant message, then a user message asking
  it to go on from where that message stopped. A trailing assistant message alone is not a
  prefill everywhere: llama-cpp-python's server and the embedded engine format it with their chat
  template, which closes the assistant turn and opens a new one, so the model would start a
  fresh answer; an assistant turn followed by an instruction means the same on every chat
  backend.

Its ``max_tokens`` is what is left of the request's (one stream chunk counted as one token).
What it sends is passed on as the rest of the same stream: under the first stream's ``id``,
without a second ``role`` delta, and without a restart of the answer (a continuation that
begins by repeating all of the text so far has the repeat dropped); a space is put between two
words the break split. The client sees one stream and one end. The failed attempt is in the
request's trace as failed (its statistics and the breaker count it); the one that finished is
the request's backend.

Not continued, and ended with the error event as without the option: a stream that carried tool
calls (a call's arguments cannot be resumed safely), several choices (``n`` > 1), a text
completion whose prompt is not one string or that is echoed, a failure that another backend
would meet too (not ``fallback``: the request's own deadline passed, a request refused), and a
route with no target left to ask. The text is kept only on routes with the option on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

from ..errors import GatewayError
from ..telemetry.record import Trace
from ..wire.openai import choice_texts
from ..wire.types import JSON, Chunk, Kind
from .attempt import Committed, close_stream
from .catalog import Target

__all__ = ["CONTINUE", "continuable", "continuation", "failover"]

log = logging.getLogger("turnout.routing")

#: the instruction a chat continuation ends with
CONTINUE = (
    "Your previous message was cut off. Continue it exactly where it stopped: do not repeat "
    "any of it, do not comment, write only the rest."
)
_CLOSERS = frozenset(".,;:!?)]}\"'")  # a word may follow these after a space


class Resumer(Protocol):
    async def resume(
        self, kind: Kind, body: JSON, trace: Trace, skip: frozenset[str], deadline: float | None
    ) -> tuple[Committed, Target]: ...


def continuable(kind: Kind, body: JSON) -> bool:
    """Whether a request's stream could be continued on another backend at all."""
    if body.get("n") not in (None, 1):
        return False
    if kind == "chat":
        return True
    if kind != "completion" or body.get("echo"):
        return False
    prompt = body.get("prompt")
    return isinstance(prompt, str) or (
        isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str)
    )


def continuation(kind: Kind, body: JSON, produced: str, sent: int) -> JSON:
    """The request that asks another backend for the rest of an answer (module docstring)."""
    out = dict(body)
    if kind == "completion":
        prompt = body["prompt"]
        out["prompt"] = prompt + produced if isinstance(prompt, str) else [prompt[0] + produced]
    elif produced:
        out["messages"] = [
            *body["messages"],
            {"role": "assistant", "content": produced},
            {"role": "user", "content": CONTINUE},
        ]
    for field in ("max_tokens", "max_completion_tokens"):
        limit = body.get(field)
        if isinstance(limit, int) and not isinstance(limit, bool):
            out[field] = max(1, limit - sent)
    return out


def joined(before: str, text: str) -> str:
    """``text`` as it follows ``before``: with a space where a break split two words."""
    if not before or not text or before[-1].isspace() or not text[0].isalnum():
        return text
    if before[-1].isalnum() or before[-1] in _CLOSERS:
        return " " + text
    return text


class _Answer:
    """What the client has been sent so far, and how a continuation is fitted to it."""

    __slots__ = ("held", "id", "kind", "match", "pieces", "resumed", "sent", "unsafe")

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.pieces: list[str] = []
        self.sent = 0  # chunks with text: about one token each
        self.id: object = None
        self.unsafe = False  # tool calls, or a second choice
        self.resumed = False
        self.match: str | None = None  # the text so far, while a continuation may repeat it
        self.held = ""  # the continuation's text while it still matches

    def text(self) -> str:
        return "".join(self.pieces)

    def note(self, chunk: Chunk) -> Chunk:
        """A chunk of the first stream: remember its text (and what forbids continuing)."""
        data = chunk.data
        if self.id is None:
            self.id = data.get("id")
        choices = data.get("choices")
        if choices:
            for choice in choices:
                delta = choice.get("delta")
                if choice.get("index", 0) or (
                    isinstance(delta, dict)
                    and (delta.get("tool_calls") or delta.get("function_call"))
                ):
                    self.unsafe = True
            texts = choice_texts(choices)
            if any(texts):
                self.pieces.extend(texts)
                self.sent += 1
        return chunk

    def resume(self) -> None:
        """A continuation starts: it may begin by repeating the text so far."""
        self.resumed = True
        self.match = self.text() or None
        self.held = ""

    def fit(self, chunk: Chunk) -> Chunk | None:
        """A chunk of a continuation as the client's stream goes on; None to send nothing."""
        data = chunk.data
        if self.id is not None:
            data["id"] = self.id
        field = "content" if self.kind == "chat" else "text"
        keep = bool(data.get("usage"))
        for choice in data.get("choices") or ():
            part = choice.get("delta") if self.kind == "chat" else choice
            if not isinstance(part, dict):
                continue
            part.pop("role", None)  # the client has its role from the first stream
            text = part.get(field)
            if isinstance(text, str) and text:
                text = part[field] = self._fresh(text)
                if text:
                    self.pieces.append(text)
                    self.sent += 1
            if self.kind == "chat" and (part.get("tool_calls") or part.get("function_call")):
                self.unsafe = True
            extra = self.kind == "chat" and any(v for k, v in part.items() if k != field)
            keep = keep or bool(text) or bool(choice.get("finish_reason")) or extra
        return Chunk(data) if keep else None

    def _fresh(self, text: str) -> str:
        """What of a continuation's ``text`` is new: a restart of the answer is dropped."""
        match = self.match
        if match is None:
            return text
        held = self.held + text
        if match.startswith(held) and len(held) < len(match):
            self.held = held  # so far it repeats the answer: wait and see
            return ""
        self.match, self.held = None, ""
        if held.startswith(match):
            rest = held[len(match) :]
            if not (rest and match[-1].isalnum() and rest[0].isalnum()):
                return rest  # the answer again from the start: only the rest is new
        return joined(match, held)


async def failover(
    router: Resumer,
    kind: Kind,
    body: JSON,
    trace: Trace,
    chunks: Committed,
    target: Target,
) -> AsyncIterator[Chunk]:
    """``chunks`` passed on; when its backend dies mid-stream, the rest from the next target."""
    answer = _Answer(kind)
    skip = frozenset({target.provider.name})
    deadline = chunks.deadline
    current: AsyncIterator[Chunk] = chunks
    ttft: float | None = None
    try:
        while True:
            try:
                async for chunk in current:
                    out = answer.fit(chunk) if answer.resumed else answer.note(chunk)
                    if out is not None:
                        yield out
                return
            except GatewayError as exc:
                if answer.unsafe or not exc.fallback:
                    raise
                if ttft is None:
                    ttft = trace.ttft_s  # the client's first token came from the first backend
                current, target = await _next(
                    router, kind, body, trace, answer, skip, exc, deadline
                )
                skip |= {target.provider.name}
                answer.resume()
    finally:
        await close_stream(current)
        if ttft is not None:
            trace.ttft_s = ttft


async def _next(
    router: Resumer,
    kind: Kind,
    body: JSON,
    trace: Trace,
    answer: _Answer,
    skip: frozenset[str],
    failure: GatewayError,
    deadline: float | None,
) -> tuple[Committed, Target]:
    """The continuation's stream, or ``failure`` again when no other target gives one."""
    request = continuation(kind, body, answer.text(), answer.sent)
    try:
        chunks, target = await router.resume(kind, request, trace, skip, deadline)
    except GatewayError as later:
        log.warning(
            "stream from %s failed mid-stream (%s) and no other target continued it: %s",
            failure.backend,
            failure.detail,
            later.detail,
        )
        raise failure from None
    log.warning(
        "stream from %s failed mid-stream (%s); %s continues it",
        failure.backend,
        failure.detail,
        target.provider.name,
    )
    return chunks, target
