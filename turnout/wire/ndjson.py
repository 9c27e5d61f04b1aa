"""Newline-delimited JSON framing (Ollama's streams): lines in, across arbitrary network reads."""

from __future__ import annotations

__all__ = ["NDJSONDecoder"]


class NDJSONDecoder:
    """Split a byte stream into JSON lines; a line may arrive in pieces across network reads."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        return [line for line in map(bytes.strip, lines) if line]

    def close(self) -> list[bytes]:
        """End of input: a last line may lack its newline."""
        rest, self._buffer = self._buffer.strip(), b""
        return [rest] if rest else []
