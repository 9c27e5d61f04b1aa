"""A timer of the event loop for every connection deadline (headers, body, keep-alive), as
before the sweep: what the sweep saves."""

import math

from turnout.server import serving

serving.COARSE_FROM = math.inf
