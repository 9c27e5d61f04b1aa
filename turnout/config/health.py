"""The ``health`` section: the background monitor's cheap probe, the canary that proves a backend
still generates, and how long a flapping backend is held out (turnout/routing/health.py reads
them)."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import _Strict

__all__ = ["HealthConfig"]


class HealthConfig(_Strict):
    """The background health monitor (turnout/routing/health.py)."""

    enabled: bool = True
    interval: float = Field(10.0, gt=0, description="seconds between probes of each backend")
    timeout: float = Field(2.0, gt=0, description="a probe slower than this counts as down")
    # The canary (turnout/routing/canary.py): one token from each model of a backend. Off by
    # default; ``true`` turns it on for local backends, and a cloud one needs its own
    # ``providers.<name>.canary: true`` (which also turns it on, or off, for one local backend).
    canary: bool = Field(False, description="ask each local backend's models for one token")
    canary_interval: float = Field(60.0, gt=0, description="seconds between canaries")
    canary_timeout: float = Field(
        30.0, gt=0, description="a canary without its token in this time marks its backend down"
    )
    # A backend that goes down again soon after it came back is held out once it answers again:
    # flap_cooldown seconds the first time, doubling each flap up to flap_max_cooldown; flaps are
    # forgotten once it stayed up flap_stable seconds. flap_cooldown 0: never held out.
    flap_cooldown: float = Field(10.0, ge=0)
    flap_max_cooldown: float = Field(300.0, ge=0)
    flap_stable: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _cap(self) -> HealthConfig:
        if self.flap_max_cooldown < self.flap_cooldown:
            raise ValueError("flap_max_cooldown must be at least flap_cooldown")
        return self
