"""A bound on re-captures, like Dynamo's recompile limit.

A compiled model captures again for every call its captures do not cover: new dtypes, a specialised
size, or -- the unbounded case -- a Python scalar argument whose value changes on every call
(``compiled(x, scale=step / 10)``), each value its own capture. After ``recapture_limit()`` captures
(8; ``MEMBOUND_RECAPTURE_LIMIT`` changes it) a call that matches none runs the original model
eagerly, and a warning (once per compiled model) names the argument that keeps changing.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

log = logging.getLogger("membound")

DEFAULT_LIMIT = 8


def recapture_limit() -> int:
    raw = os.environ.get("MEMBOUND_RECAPTURE_LIMIT", "")
    try:
        return max(1, int(raw)) if raw else DEFAULT_LIMIT
    except ValueError:
        raise ValueError(f"MEMBOUND_RECAPTURE_LIMIT must be an int >= 1, got {raw!r}") from None


def recapture_limit_hit(compiled: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """True when ``compiled`` holds the most captures allowed and this call (matching none) must run eagerly."""
    limit = recapture_limit()
    if len(compiled.entries) < limit:
        return False
    why = compiled.entries[-1].capture.mismatch(args, kwargs) or "the call matches no capture"
    if not compiled.__dict__.get("_membound_recapture_warned"):
        compiled.__dict__["_membound_recapture_warned"] = True
        warnings.warn(f"membound: {compiled!r} reached the recapture limit ({limit} captures); calls that match none "
                      f"of them now run eagerly, uncompiled. Last reason: {why}. A Python scalar argument that "
                      f"changes on every call is captured once per value: pass it as a tensor, or raise the limit "
                      f"with MEMBOUND_RECAPTURE_LIMIT", stacklevel=3)
    log.debug("membound: recapture limit reached, running eagerly: %s", why)
    return True
