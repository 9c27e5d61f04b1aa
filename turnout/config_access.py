"""The configuration of gateway keys, limits and the usage ledger (turnout/access, turnout/store):
the ``storage``, ``limits`` and ``auth`` sections, which `turnout.config.Config` inherits from
`AccessSections`. Same layer as config.py; kept apart to keep that module small."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "TEXT_SETTINGS",
    "AccessSections",
    "AuthConfig",
    "LimitsConfig",
    "StorageConfig",
]

#: settings read as text from the environment, never as YAML (secrets, URLs with passwords)
TEXT_SETTINGS = ("api_key", "admin_key", "database_url", "redis_url")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StorageConfig(_Strict):
    """Where keys and the usage ledger live; Redis shares limits between instances."""

    database_url: str | None = Field(
        None, description="sqlite:///path or postgresql://...; unset: SQLite in the data directory"
    )
    redis_url: str | None = Field(None, description="shared limits, budgets and revocations")
    spool_path: str | None = Field(None, description="ledger rows while the database is down")
    spool_max_bytes: int = Field(64 * 1024 * 1024, ge=4096, description="the spool's bound")


class LimitsConfig(_Strict):
    on_store_error: Literal["allow", "deny"] = Field(
        "allow", description="Redis unreachable: count in this process (allow) or refuse (deny)"
    )
    user_rpm: int | None = Field(None, ge=1, description="per end user and endpoint")
    user_tpm: int | None = Field(None, ge=1, description="per end user and endpoint")


class AuthConfig(_Strict):
    required: bool = Field(False, description="ask for a gateway key even before one exists")


class AccessSections(_Strict):
    """The sections `turnout.config.Config` inherits."""

    storage: StorageConfig = Field(default_factory=lambda: StorageConfig())
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig())
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig())
