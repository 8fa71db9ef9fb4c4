"""membound's logs: Python ``logging`` under the logger ``membound``, one child logger per area.

    MEMBOUND_LOGS=recompiles python app.py          # INFO lines of one area
    MEMBOUND_LOGS=+passes,recompiles python app.py  # ``+`` = DEBUG (every pass, its time and notes)
    MEMBOUND_LOGS=all,-capture python app.py        # ``-`` = errors only; ``all`` = every area

In the spirit of ``TORCH_LOGS``. The areas (``membound.<area>`` loggers):

* ``capture``: each capture of a model (frontend, inputs, node count, seconds);
* ``recompiles``: every recapture and its reason (a new shape, a replaced parameter, ...), and the
  warning when a model is recaptured more than ``MEMBOUND_RECAPTURE_LIMIT`` times (default 8);
* ``passes``: each pipeline run; at DEBUG each pass with its time and what it noted;
* ``backend``: which backend compiled which graph, and how long it took;
* ``generate``: what ``generate`` was asked (resolved GenerationConfig) and its tokens/s.

Without ``MEMBOUND_LOGS`` nothing is configured: warnings reach stderr through Python's last-resort
handler and an application's own ``logging`` set-up applies as usual. This module imports nothing of
membound, so every layer may log (``logging.getLogger("membound.passes")``) without importing it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

AREAS = ("capture", "recompiles", "passes", "backend", "generate")
ROOT = "membound"

_handler: Optional[logging.Handler] = None


def logger(area: str) -> logging.Logger:
    """The logger of one area (``membound.<area>``)."""
    if area not in AREAS:
        raise ValueError(f"unknown log area {area!r}; the areas are {', '.join(AREAS)}")
    return logging.getLogger(f"{ROOT}.{area}")


def parse(spec: str) -> dict[str, int]:
    """``"+passes,recompiles,-capture"`` -> ``{"passes": DEBUG, "recompiles": INFO, "capture": ERROR}``."""
    levels: dict[str, int] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        level = logging.INFO
        if item[0] == "+":
            level, item = logging.DEBUG, item[1:]
        elif item[0] == "-":
            level, item = logging.ERROR, item[1:]
        names = AREAS if item == "all" else (item,)
        for name in names:
            if name not in AREAS:
                raise ValueError(f"MEMBOUND_LOGS: unknown area {item!r}; the areas are {', '.join(AREAS)} "
                                 f"(or all), each optionally prefixed by + (debug) or - (errors only)")
            levels[name] = level
    return levels


def configure(spec: Optional[str] = None, *, level: Optional[int] = None) -> None:
    """Set the areas' levels from a ``MEMBOUND_LOGS``-style ``spec`` and/or one ``level`` for all of them
    (the CLI's ``-v``/``-q``), and send ``membound`` records to stderr with the area in front."""
    global _handler
    levels = {area: level for area in AREAS} if level is not None else {}
    levels.update(parse(spec or ""))
    if not levels:
        return
    for area, lvl in levels.items():
        logging.getLogger(f"{ROOT}.{area}").setLevel(lvl)
    root = logging.getLogger(ROOT)
    if _handler is None:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        root.addHandler(_handler)
        root.propagate = False  # our handler prints them: no second copy through the root logger
    root.setLevel(min(levels.values()))


def configure_from_env() -> None:
    """Apply ``MEMBOUND_LOGS`` once (``import membound`` calls this); a bad value is one warning."""
    spec = os.environ.get("MEMBOUND_LOGS")
    if not spec:
        return
    try:
        configure(spec)
    except ValueError as e:
        logging.getLogger(ROOT).warning("%s", e)
