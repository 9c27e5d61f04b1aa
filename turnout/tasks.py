"""Background tasks the gateway owns (health monitor, telemetry drain, discovery): stopping one."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["stop"]


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished unwinding."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
