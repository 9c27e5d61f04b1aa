"""The OpenAI Responses API (``POST /v1/responses``) of the fake OpenAI-compatible runtime, as vLLM
serves it (its preset declares the dialect; turnout relays Responses requests to it).

This is a fake: vLLM needs a GPU this machine lacks. It follows OpenAI's documented Responses wire
format exactly, as OpenAI's OpenAPI description has it (tests/fixtures/openai/schemas.json, from
openai/openai-openapi; its README says where it comes from): the ``response`` object (``id``,
``object: "response"``, ``created_at``, ``status``, ``model``, ``output`` with one ``message``
item of ``output_text`` content, ``usage`` with ``input_tokens``, ``output_tokens``,
``total_tokens`` and their details, and the fields it echoes); streamed as named SSE events, each
with its ``sequence_number`` from 0, in the documented order: ``response.created``,
``response.in_progress``, ``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta`` per word, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, ``response.completed`` (the
completed response, with its usage; ``response.incomplete`` when cut at
``max_output_tokens``). Errors before a reply are ``{"error": {...}}`` bodies with their status
(vLLM's, with an integer ``code``); an error mid-stream (`FakeRuntime.fail_midstream`) is an
``error`` event (``type``, ``code``, ``message``, ``param``, ``sequence_number``) after ``after``
events (sent a moment later, so that they arrive first), and the stream ends there.

What only this fake produces, so that a test can tell its objects from turnout's translation:
ids ``resp_fakevllm<n>`` / ``msg_fakevllm<n>``, the backend's own model name (turnout's
translation echoes the client's), and ``"service_tier": "default"``. Its model is the runtime
fake's: ``You said: <the last user text>``, a word a token, cut at ``max_output_tokens``
(``status: "incomplete"``). Input tokens are the words of every input text and the instructions.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from tests.fakes.openai_runtimes import FakeRuntime

__all__ = ["responses_handler"]

JSON = dict[str, Any]
_IDS = itertools.count(1)


def _texts(value: Any) -> list[str]:
    """Every input text of a Responses ``input`` (a string or items), in order."""
    if isinstance(value, str):
        return [value]
    out: list[str] = []
    for item in value if isinstance(value, list) else ():
        if not isinstance(item, dict):
            continue
        content = item.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [p["text"] for p in content if isinstance(p, dict) and "text" in p]
    return out


def _response(body: JSON, rid: str, status: str, output: list[JSON], usage: JSON | None) -> JSON:
    now = int(time.time())
    limit = body.get("max_output_tokens")
    return {
        "id": rid, "object": "response", "created_at": now, "status": status,
        "background": False, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"), "max_output_tokens": limit,
        "model": body.get("model"), "output": output, "parallel_tool_calls": True,
        "previous_response_id": None, "reasoning": None, "service_tier": "default",
        "store": bool(body.get("store", True)), "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
        "top_p": body.get("top_p", 1.0), "truncation": "disabled", "metadata": {},
        **({"usage": usage} if usage is not None else {}),
    }  # fmt: skip


def _event(name: str, seq: int, obj: JSON) -> bytes:
    data = {"type": name, "sequence_number": seq, **obj}
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def responses_handler(fake: FakeRuntime) -> Any:
    """The ``POST /v1/responses`` handler of ``fake``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        from tests.fakes.openai_runtimes import BODY

        body: JSON = request[BODY]
        if (refused := fake._refusal(body)) is not None:
            return refused
        texts = _texts(body.get("input"))
        said = texts[-1] if texts else ""
        limit = {"max_tokens": body.get("max_output_tokens")}
        pieces, finish = fake._generate("You said: " + said, limit)
        status = "incomplete" if finish == "length" else "completed"
        prompt = [*texts, body["instructions"]] if body.get("instructions") else texts
        n_in, n_out = len(" ".join(prompt).split()), len(pieces)
        usage = {
            "input_tokens": n_in,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": n_out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": n_in + n_out,
        }
        n = next(_IDS)
        rid, mid = f"resp_fakevllm{n:06d}", f"msg_fakevllm{n:06d}"
        text = "".join(pieces)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item = {"id": mid, "type": "message", "status": "completed", "role": "assistant",
                "content": [part]}  # fmt: skip
        if not body.get("stream"):
            return web.json_response(_response(body, rid, status, [item], usage))
        shell = _response(body, rid, "in_progress", [], None)
        at = {"item_id": mid, "output_index": 0, "content_index": 0}
        opened = {**item, "status": "in_progress", "content": []}
        events: list[tuple[str, JSON]] = [
            ("response.created", {"response": shell}),
            ("response.in_progress", {"response": shell}),
            ("response.output_item.added", {"output_index": 0, "item": opened}),
            ("response.content_part.added", {**at, "part": {**part, "text": ""}}),
            *[("response.output_text.delta", {**at, "delta": p, "logprobs": []}) for p in pieces],
            ("response.output_text.done", {**at, "text": text, "logprobs": []}),
            ("response.content_part.done", {**at, "part": part}),
            ("response.output_item.done", {"output_index": 0, "item": item}),
            (f"response.{status}", {"response": _response(body, rid, status, [item], usage)}),
        ]
        if fake._midstream is not None:
            after, message = fake._midstream
            error = {"code": "server_error", "message": message, "param": None}
            events = [*events[:after], ("error", error)]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for seq, (name, obj) in enumerate(events):
            if name == "error":  # after what went before has reached the client
                await asyncio.sleep(0.05)
            await response.write(_event(name, seq, obj))
        await response.write_eof()
        return response

    return handle
