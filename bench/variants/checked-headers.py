"""turnout's own response headers (request id, overhead, a key's rate limits) passed to uvicorn
with the response's, each checked by it, as before they went into the head as ready lines."""

from turnout.server import pipeline, serving

_begin = serving.GuardedProtocol.on_message_begin


def on_message_begin(self):  # type: ignore[no-untyped-def]
    _begin(self)
    del self.scope[pipeline.HEAD_LINES]


serving.GuardedProtocol.on_message_begin = on_message_begin  # type: ignore[method-assign]
