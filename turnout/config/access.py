"""The configuration of gateway keys, limits and the usage ledger (turnout/access, turnout/store):
the ``storage``, ``limits`` and ``auth`` sections of `turnout.config.Config`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import _Strict

__all__ = [
    "TEXT_SETTINGS",
    "AuthConfig",
    "LimitsConfig",
    "StorageConfig",
]

#: settings read as text from the environment, never as YAML (secrets, URLs with passwords)
TEXT_SETTINGS = ("api_key", "admin_key", "database_url", "redis_url")


class StorageConfig(_Strict):
    """Where keys and the usage ledger live; Redis shares limits between instances."""

    database_url: str | None = Field(
        None, description="sqlite:///path or postgresql://...; unset: SQLite in the data directory"
    )
    redis_url: str | None = Field(None, description="shared limits, budgets and revocations")
    spool_path: str | None = Field(None, description="ledger rows while the database is down")
    spool_max_bytes: int = Field(64 * 1024 * 1024, ge=4096, description="the spool's bound")
    usage_retention_days: float | None = Field(
        90,
        ge=31,
        description="ledger rows older than this are deleted (hourly); at least 31, the longest "
        "budget period and a day; null keeps them forever",
    )


class LimitsConfig(_Strict):
    on_store_error: Literal["allow", "deny"] = Field(
        "allow", description="Redis unreachable: count in this process (allow) or refuse (deny)"
    )
    user_rpm: int | None = Field(None, ge=1, description="per end user and endpoint")
    user_tpm: int | None = Field(None, ge=1, description="per end user and endpoint")


class AuthConfig(_Strict):
    required: bool = Field(False, description="ask for a gateway key even before one exists")
