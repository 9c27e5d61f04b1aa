"""Server-sent events: an incremental decoder tolerant of every runtime's framing, and encoders.

The decoder accepts LF and CRLF line endings, skips ``:`` comment lines (pings), keeps the event
name, and treats end of input as the end of a pending event (KoboldCpp omits the final blank line).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

__all__ = ["DONE", "SSEDecoder", "SSEEvent", "comment", "encode_data", "encode_json"]

DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class SSEEvent:
    data: bytes
    event: str | None = None


class SSEDecoder:
    """Feed bytes as they arrive; get complete events back."""

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            self._line(line.rstrip(b"\r"), events)
        return events

    def close(self) -> list[SSEEvent]:
        """End of input: whatever is pending is a final event."""
        events: list[SSEEvent] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r"), events)
            self._buffer = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(b"\n".join(self._data), self._event))
            self._data = []
            self._event = None
            return
        if line[0] == 0x3A:  # ':' comment / keep-alive ping
            return
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")


def encode_data(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def encode_json(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def comment(text: str = "keep-alive") -> bytes:
    return b": " + text.encode() + b"\n\n"
