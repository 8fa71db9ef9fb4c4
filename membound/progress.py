"""Progress bars on long work (capture, passes, backend, kernel builds, long ``generate`` runs).

A bar is shown only when stderr is a terminal and ``MEMBOUND_PROGRESS`` is not ``0``; anywhere else
(tests, pipes, CI logs) :func:`bar` returns a stand-in that does nothing. Short work never shows one:
the bar appears after ``delay`` seconds (tqdm's own option), so a tiny model compiles silently.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, Optional


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


def silent() -> Any:
    """A bar that shows nothing (what :func:`bar` returns when progress is off)."""
    return _Silent()


def bar(desc: str, total: Optional[int] = None, unit: str = "it", delay: float = 1.0) -> Any:
    """A tqdm bar on stderr, or a silent stand-in (see the module docstring)."""
    if not enabled():
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, delay=delay, leave=False, file=sys.stderr, dynamic_ncols=True)


@contextlib.contextmanager
def kernel_compiles(name: str) -> Iterator[Any]:
    """A bar counting the Triton kernels compiled inside the block (a generated module's first launch at
    new shapes compiles each of its kernels; a CUDA-graph warm-up does the same). Counting goes through
    Triton's ``knobs.runtime.jit_post_compile_hook``, chained to any hook already set and restored after.
    Off (no hook, no bar) when progress is off; a Triton without the knob shows an uncounted bar."""
    if not enabled():
        yield _Silent()
        return
    with bar(f"membound: compiling kernels of {name}", total=None, unit="kernel") as shown:
        runtime = _triton_runtime_knobs()
        if runtime is None:
            yield shown
            return
        previous = runtime.jit_post_compile_hook

        def counted(*args: Any, **kwargs: Any) -> Any:
            shown.update(1)
            fn = kwargs.get("fn")
            shown.set_postfix_str(str(getattr(fn, "name", "")))
            return previous(*args, **kwargs) if previous is not None else None

        runtime.jit_post_compile_hook = counted
        try:
            yield shown
        finally:
            runtime.jit_post_compile_hook = previous


def _triton_runtime_knobs() -> Any:
    """``triton.knobs.runtime`` (Triton >= 3.4), or None."""
    try:
        import triton
    except ImportError:
        return None
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    return runtime if hasattr(runtime, "jit_post_compile_hook") else None
