"""Gateway keys: making them, hashing them, what a key record holds and what it allows.

A key is ``gw_`` and 32 characters of `secrets.token_urlsafe` (192 random bits). Only its
SHA-256 is stored: a slow hash (argon2, bcrypt) protects guessable passwords, and nobody guesses
one of 2**192 values, so a fast hash loses nothing and costs a microsecond per request (recorded
in docs/decisions.md). Lookups go by the hash; the stored and the computed hash are then
compared with `hmac.compare_digest`. A key is shown by its prefix only (``gw_AbCd1234``), in
every list, log line, error message and ledger row.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field, replace

__all__ = [
    "KEY_PREFIX",
    "KeyRecord",
    "generate_key",
    "hash_key",
    "key_prefix",
    "parse_duration",
    "parse_period",
]

KEY_PREFIX = "gw_"
_RANDOM_BYTES = 24  # 192 bits; the issue asks for at least 128
_SHOWN = len(KEY_PREFIX) + 8  # "gw_" and 8 characters: 48 of the 192 bits
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
#: budget periods a key may have
PERIODS = {"1d": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}


def generate_key() -> str:
    """A new random key: ``gw_`` and 192 bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def hash_key(raw: str) -> str:
    """The stored form of a key (hex SHA-256)."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def key_prefix(raw: str) -> str:
    """What may be shown of a key: its first 11 characters."""
    return raw[:_SHOWN]


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``12h``, ``7d``, ``2w``; ValueError naming what is allowed."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; use a number and a unit: s, m, h, d or w (e.g. 30d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_period(text: str) -> str:
    if text not in PERIODS:
        raise ValueError(f"budget period {text!r} is not one of {', '.join(PERIODS)}")
    return text


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One gateway key as the request path sees it (never the raw key)."""

    name: str
    prefix: str
    models: tuple[str, ...] = ()  # glob patterns; empty: every model
    rpm: int | None = None
    tpm: int | None = None
    budget: float | None = None
    budget_period: str = "30d"
    expires_at: float | None = None
    priority: int = 1
    admin: bool = False
    created_at: float = field(default_factory=time.time)
    revoked_at: float | None = None

    def allows(self, model: str) -> bool:
        """Whether ``model`` (as the request names it) is in the key's scope."""
        if not self.models:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def live(self, now: float) -> bool:
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or now < self.expires_at

    def scope(self) -> str:
        return ",".join(self.models) if self.models else "*"

    def with_changes(self, **changes: object) -> KeyRecord:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Credential:
    """One hash that opens a key: its current one, or a rotated-out one until ``until``."""

    hash: str
    name: str
    prefix: str
    until: float | None = None  # end of a rotation's grace period

    def live(self, now: float) -> bool:
        return self.until is None or now < self.until


def period_start(period: str, now: float) -> float:
    """Start of the budget window holding ``now`` (windows aligned to the Unix epoch)."""
    length = PERIODS[period]
    return now - (now % length)
