"""tests/_bench_run.py: a bench run in the test process reports what a subprocess would (exit status, stdout,
stderr) and leaves nothing behind for the next test: the environment, sys.path and argv, the bench modules it
imported, torch's default dtype, grad mode and random state are as before, also when the bench raises."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from _bench_run import ROOT, run_bench

SCRIPT = '''
import os, sys
import torch
sys.path.insert(0, {benches!r})
import _timing  # a bench module, imported as the benches import each other
os.environ["BENCH_RUN_TEST_VAR"] = "set by the bench"
torch.set_default_dtype(torch.float64)
torch.set_grad_enabled(False)
torch.manual_seed(1234)
print("argv", sys.argv[1:], os.environ.get("BENCH_RUN_TEST_GIVEN"))
print("to stderr", file=sys.stderr)
{ending}
'''


def state() -> tuple:
    return (dict(os.environ), list(sys.path), list(sys.argv), torch.get_default_dtype(), torch.is_grad_enabled(),
            torch.random.get_rng_state().clone(), os.getcwd())


def same(a: tuple, b: tuple) -> bool:
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))


@pytest.mark.parametrize("ending,status", [("", 0), ("sys.exit(3)", 3), ("sys.exit('no GPU here')", 1)])
def test_a_run_reports_like_a_process_and_restores_the_process(tmp_path: Path, ending: str, status: int) -> None:
    script = tmp_path / "fake_bench.py"
    script.write_text(SCRIPT.format(benches=str(ROOT / "benches"), ending=ending))
    had_timing = "_timing" in sys.modules
    before = state()
    run = run_bench("fake", "--smoke", "7", script=script, env={"BENCH_RUN_TEST_GIVEN": "given"}, cwd=tmp_path)
    assert run.returncode == status
    assert run.stdout == "argv ['--smoke', '7'] given\n"
    assert run.stderr.startswith("to stderr\n") and ("no GPU here" in run.stderr) == (status == 1)
    assert same(state(), before)
    assert ("_timing" in sys.modules) == had_timing  # imported afresh by the next run that wants it


def test_an_exception_propagates_and_the_process_is_restored(tmp_path: Path) -> None:
    script = tmp_path / "fake_bench.py"
    script.write_text(SCRIPT.format(benches=str(ROOT / "benches"), ending="raise ValueError('bench failed')"))
    before = state()
    with pytest.raises(ValueError, match="bench failed"):
        run_bench("fake", script=script)
    assert same(state(), before)
