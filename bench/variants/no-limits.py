"""A key checked (who it is, its scope) but no limits counted, no reservation, no headers: what
the limits cost with bench/ab.py --key (not a configuration turnout offers)."""

from turnout import gateway


def _limit(self, trace, kind, body):  # type: ignore[no-untyped-def]
    return None  # nothing to await: admitted


gateway.Gateway._limit = _limit  # type: ignore[method-assign]
