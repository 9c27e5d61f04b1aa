"""A key's limits counted as usual but no ``x-ratelimit-*`` headers on its responses: what the
six headers cost (not a configuration turnout offers)."""

from turnout.store import service

_admit = service.Access.admit


async def admit(self, trace, kind, body, tokens):  # type: ignore[no-untyped-def]
    await _admit(self, trace, kind, body, tokens)
    trace.rate_headers = None


service.Access.admit = admit  # type: ignore[method-assign]
