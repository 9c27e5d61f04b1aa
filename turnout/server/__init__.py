"""The HTTP server: the fronts (turnout/server/fronts/), the gateway's own API, one pipeline."""

from .app import create_app

__all__ = ["create_app"]
