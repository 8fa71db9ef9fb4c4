"""Run a bench's command line in the test process: ``run_bench("decode_e2e", "--smoke", ...)`` does what
``python benches/decode_e2e.py --smoke ...`` does, without the subprocess.

A subprocess paid its own import of torch, transformers and Triton (8 s on the CI machine, for each of the nine
smoke runs) and ran without this suite's speed-ups (``tests/conftest.py``: the interpreter's helper re-patch,
the export memo). In the test process, a run must not leave anything behind for the next test in the worker, so
:func:`run_bench` puts back what a bench may change: the environment, the working directory, ``sys.argv`` and
``sys.path``, the bench modules it imported (``benches/*.py`` import each other as top-level modules), torch's
default dtype, grad mode, thread count and CPU random state. Its stdout and stderr are captured, and its exit
status comes back as a subprocess's would (``SystemExit``); any other exception propagates, with the bench's own
traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BenchRun:
    """What a subprocess run would have returned: the exit status and the captured output."""

    returncode: int
    stdout: str
    stderr: str


def load_module(path: str, name: str) -> ModuleType:
    """The file ``path`` (relative to the repository root, e.g. ``benches/gemv_sweep.py``) imported as module
    ``name``, registered in ``sys.modules`` first (dataclasses look their module up while the file executes), so a
    test can call a bench's functions without running its command line."""
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _exit_status(exc: SystemExit) -> tuple[int, str]:
    """``sys.exit``'s argument as a process reports it: None is 0, an int itself, anything else 1 (printed)."""
    if exc.code is None:
        return 0, ""
    if isinstance(exc.code, int):
        return exc.code, ""
    return 1, f"{exc.code}\n"


def run_bench(name: str, *args: str, env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None,
              script: Optional[Path] = None) -> BenchRun:
    """Run ``benches/<name>.py`` (or ``script``) with ``args`` as ``__main__`` in this process; ``env`` is set for
    the run only, ``cwd`` (default: the repository root) is the working directory during it."""
    path = script or ROOT / "benches" / f"{name}.py"
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_argv, saved_path, saved_modules = sys.argv[:], sys.path[:], set(sys.modules)
    saved_torch = (torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads(),
                   torch.random.get_rng_state())
    out, err = io.StringIO(), io.StringIO()
    status = 0
    try:
        os.environ.update(env or {})
        os.chdir(cwd or ROOT)
        sys.argv = [str(path), *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(path), run_name="__main__")
            except SystemExit as exc:
                status, message = _exit_status(exc)
                err.write(message)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.argv, sys.path[:] = saved_argv, saved_path
        benches = str(ROOT / "benches")
        for mod in set(sys.modules) - saved_modules:  # a later run (or test) imports them afresh
            if (getattr(sys.modules[mod], "__file__", None) or "").startswith(benches):
                del sys.modules[mod]
        dtype, grad, threads, rng = saved_torch
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
    return BenchRun(status, out.getvalue(), err.getvalue())
