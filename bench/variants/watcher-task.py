"""A watcher task per inference request waiting for the client's disconnect, as before the
connection told the request itself (and as under any ASGI server but `turnout serve`)."""

from turnout.server import serving


def on_message_begin(self):  # type: ignore[no-untyped-def]
    super(serving.GuardedProtocol, self).on_message_begin()
    if not self._in_headers:
        self._headers_due()


serving.GuardedProtocol.on_message_begin = on_message_begin  # type: ignore[method-assign]
