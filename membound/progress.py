"""Progress bars on long work (capture, passes, backend, kernel builds, long ``generate`` runs).

A bar is shown only when stderr is a terminal and ``MEMBOUND_PROGRESS`` is not ``0``; anywhere else
(tests, pipes, CI logs) :func:`bar` returns a stand-in that does nothing. Short work never shows one:
the bar appears after ``delay`` seconds (tqdm's own option), so a tiny model compiles silently.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional


def enabled() -> bool:
    flag = os.environ.get("MEMBOUND_PROGRESS", "")
    if flag == "0":
        return False
    if flag == "1":
        return True
    return sys.stderr.isatty()


class _Silent:
    """The bar when progress is off: the same methods, no output."""

    def update(self, n: int = 1) -> None:
        pass

    def set_description_str(self, text: str) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def bar(desc: str, total: Optional[int] = None, unit: str = "it", delay: float = 1.0) -> Any:
    """A tqdm bar on stderr, or a silent stand-in (see the module docstring)."""
    if not enabled():
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, delay=delay, leave=False, file=sys.stderr, dynamic_ncols=True)
