"""Pieces of OpenAI's response shapes that every dialect's answers share."""

from __future__ import annotations

import base64
import struct

__all__ = ["embedding_base64"]


def embedding_base64(vector: list[float]) -> str:
    """An embedding as OpenAI sends it for ``encoding_format: "base64"``: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
