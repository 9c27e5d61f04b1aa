"""Gateway keys, limits and budgets, sans I/O: what a key is and allows (`keys`), who a request
is (`auth`), the cached view of every key (`cache`), and the per-key and per-user limits
(`quota`). The storage behind them is turnout/store; the HTTP stages are in turnout/server.

Layer: above config, wire and errors; below gateway and server (it imports neither).
"""

from .auth import ADMIN, AuthenticationError, PermissionDeniedError, credential
from .cache import KeyCache, KeySource
from .keys import KeyRecord, generate_key, hash_key, key_prefix
from .quota import Admission, Decision, LocalQuotas, RateLimitError, Ticket

__all__ = [
    "ADMIN",
    "Admission",
    "AuthenticationError",
    "Decision",
    "KeyCache",
    "KeyRecord",
    "KeySource",
    "LocalQuotas",
    "PermissionDeniedError",
    "RateLimitError",
    "Ticket",
    "credential",
    "generate_key",
    "hash_key",
    "key_prefix",
]
