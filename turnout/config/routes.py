"""The ``routes`` section: route groups, their strategies, retry policies and time limits
(turnout/routing/ reads them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import _Strict

__all__ = [
    "RETRY_CLASSES",
    "STRATEGIES",
    "RetryConfig",
    "RouteConfig",
    "RouteTargetConfig",
    "TimeoutsConfig",
]

#: route strategies (turnout/routing/strategies.py implements one function per name)
STRATEGIES = (
    "priority",
    "cost",
    "round_robin",
    "weighted",
    "least_latency",
    "least_busy",
    "capability",
    "prefix_affinity",
)
#: failure classes a retry policy may retry on the same backend
RETRY_CLASSES = ("connection", "timeout", "429", "5xx", "protocol", "model_not_found")


class RetryConfig(_Strict):
    max_retries: int | None = Field(None, ge=0, le=10, description="unset: the provider's")
    backoff_base: float = Field(0.1, ge=0)
    backoff_cap: float = Field(2.0, ge=0)
    # A timeout is not retried on the same backend by default (a stalled backend would hold
    # the client three times as long); it still falls back to the next target.
    retry_on: list[str] = Field(default_factory=lambda: ["connection", "429", "5xx", "protocol"])
    honour_retry_after: bool = True
    recovery_wait: float = Field(
        2.0, ge=0, description="how long a request waits for a cooling backend to recover"
    )

    @field_validator("retry_on", mode="before")
    @classmethod
    def _classes(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = [str(c) for c in v]  # YAML reads 429 as a number
        for c in out:
            if c not in RETRY_CLASSES:
                allowed = ", ".join(RETRY_CLASSES)
                raise ValueError(f"unknown failure class {c!r}; allowed: {allowed}")
        return out


class TimeoutsConfig(_Strict):
    first_token: float | None = Field(None, gt=0, description="per attempt: send to first chunk")
    total: float | None = Field(None, gt=0, description="the whole request, retries included")


class RouteTargetConfig(_Strict):
    provider: str
    model: str | None = Field(None, min_length=1, description="unset: the route's name")
    weight: float = Field(1.0, ge=0)
    priority: int = 0
    cost_per_1k_input: float | None = Field(None, ge=0, description="unset: the provider's")
    cost_per_1k_output: float | None = Field(None, ge=0)


class RouteConfig(_Strict):
    strategy: Literal[STRATEGIES] = "priority"  # type: ignore[valid-type]
    targets: list[RouteTargetConfig] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)
    retry: RetryConfig = Field(default_factory=lambda: RetryConfig())
    timeouts: TimeoutsConfig = Field(default_factory=lambda: TimeoutsConfig())
    # What a stream whose backend dies after its first chunk gets (turnout/routing/failover.py):
    # an error event, or the rest of the answer from the route's next target.
    stream_failover: Literal["error", "continue"] = Field(
        "error", description="continue: finish a stream cut mid-way on the next target"
    )

    @model_validator(mode="after")
    def _some_weight(self) -> RouteConfig:
        if self.strategy == "weighted" and not any(t.weight > 0 for t in self.targets):
            raise ValueError("strategy 'weighted' needs a target with a weight above 0")
        return self
