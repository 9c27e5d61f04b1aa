"""The request log writes each line as it comes (a write and a flush a request), as before it
wrote a drain's lines at once."""

from turnout.telemetry import logs

logs.BatchingHandler.hold_lines = lambda self: None  # type: ignore[method-assign]
