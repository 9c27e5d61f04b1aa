"""Model addressing and routing: which backend serves a request, with retries and fallback."""

from .catalog import Catalog, Target
from .router import Router

__all__ = ["Catalog", "Router", "Target"]
