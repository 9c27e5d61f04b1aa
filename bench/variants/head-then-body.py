"""A response's head and body written separately (two sends a reply), as uvicorn does and
turnout did before it held the head for the body."""

from turnout.server import serving


def write(self, data):  # type: ignore[no-untyped-def]
    self.flush()
    self._transport.write(data)


serving._Corked.write = write  # type: ignore[method-assign]
