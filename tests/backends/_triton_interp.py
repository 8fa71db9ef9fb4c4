"""Running Triton kernels on the CPU from a test module (``TRITON_INTERPRET=1``).

Import this module before anything imports triton: it sets ``TRITON_INTERPRET=1`` when there is no
CUDA. When triton was already imported without it (another test module got there first),
``Interpreted(__file__).runs_here(request)`` re-runs the whole test module once in a fresh
interpreter-mode process and reports that run's verdict for each test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def triton_interprets() -> bool:
    if DEVICE == "cuda":
        return True
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    from membound.backends.triton.executable import interpreted

    return interpreted() and isinstance(tl.standard.sum, InterpretedFunction)


class Interpreted:
    """One per test module: ``runs_here(request)`` is True when kernels run in this process; False when
    the test already passed in the interpreter re-run (it fails the test with that run's failure)."""

    def __init__(self, module_file: str) -> None:
        self.file = Path(module_file)
        self.here = triton_interprets()
        self.results: dict[str, str] = {}

    def runs_here(self, request: pytest.FixtureRequest) -> bool:
        if self.here:
            return True
        if not self.results:
            self._rerun(request)
        name = request.node.name
        assert name in self.results, f"{name} did not run in the TRITON_INTERPRET=1 subprocess"
        assert self.results[name] == "", f"in a TRITON_INTERPRET=1 subprocess:\n{self.results[name]}"
        return False

    def _rerun(self, request: pytest.FixtureRequest) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.xml"
            env = dict(os.environ, TRITON_INTERPRET="1")
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                f"--junitxml={report}", str(self.file)], cwd=request.config.rootpath, env=env,
                               capture_output=True, text=True, timeout=900)
            assert report.exists(), f"the interpreter re-run did not report:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}"
            for case in ET.parse(report).getroot().iter("testcase"):
                failure = case.find("failure")
                if failure is None:
                    failure = case.find("error")
                self.results[case.get("name", "")] = "" if failure is None else (failure.text or "failed")[-4000:]
