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


def compiled_in_subprocess(script: str, timeout: int = 300) -> str:
    """The standard output of ``script`` run in a fresh process without TRITON_INTERPRET (Triton's compiler runs
    there, no GPU needed: ``compile_check.compile_ptx`` builds for sm_90), the repository on its path; the script
    must succeed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def hopper_registers(cases: str, labels: str = "") -> dict:
    """``{label: (registers a thread, spilled bytes)}`` of the sm_90 builds of ``compile_check.<cases>()``'s kernels
    whose label contains ``labels``, from the ptxas bundled with Triton (no GPU; in a process without
    TRITON_INTERPRET, which the compiler needs). Skips the test when no bundled ptxas reads Triton's PTX."""
    import json

    code = ("import json\n"
            f"from membound.backends.triton.kernels.compile_check import {cases}, compile_ptx, ptxas_info\n"
            "print(json.dumps({label: ptxas_info(compile_ptx(kernel, args, 90, **options)[0], 90)\n"
            f"                  for kernel, label, args, options in {cases}() if {labels!r} in label}}))\n")
    info = json.loads(compiled_in_subprocess(code).strip().splitlines()[-1])
    if any(v is None for v in info.values()):
        pytest.skip(f"no bundled ptxas reads this Triton's PTX: {info}")
    return info
