"""Logging areas (MEMBOUND_LOGS), the recapture log and limit, progress bars off without a terminal."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import membound
from membound import logs, progress

ROOT = Path(__file__).resolve().parents[1]


def test_parse_follows_torch_logs_spirit():
    assert logs.parse("+passes,recompiles,-capture") == {"passes": logging.DEBUG, "recompiles": logging.INFO,
                                                         "capture": logging.ERROR}
    assert set(logs.parse("all")) == set(logs.AREAS)
    with pytest.raises(ValueError, match="unknown area 'pases'.*capture, recompiles, passes"):
        logs.parse("pases")


def test_membound_logs_env_prints_passes_and_recompiles():
    code = ("import torch, membound\n"
            "f = membound.compile(lambda x, k: x * k, backend='reference')\n"
            "f(torch.randn(3), 2.0); f(torch.randn(3), 3.0)\n")
    env = {**os.environ, "MEMBOUND_LOGS": "+passes,recompiles", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "[membound.passes]" in res.stderr and "canonicalize" in res.stderr
    assert "[membound.recompiles] recapturing" in res.stderr and "the capture specialised on 2.0" in res.stderr


def test_every_recapture_is_logged_with_its_reason(caplog, monkeypatch):
    monkeypatch.setenv("MEMBOUND_RECAPTURE_LIMIT", "2")
    f = membound.compile(lambda x, k: x * k, backend="reference")
    with caplog.at_level(logging.INFO, logger="membound.recompiles"), pytest.warns(UserWarning, match="recapture limit"):
        for k in (1.0, 2.0, 3.0, 4.0):  # past the limit (runtime/recapture.py) calls run the original function
            torch.testing.assert_close(f(torch.ones(3), k), torch.full((3,), k))
    lines = [r.getMessage() for r in caplog.records if r.name == "membound.recompiles"]
    assert len(lines) == 1 and "recapturing" in lines[0] and "the capture specialised on 1.0" in lines[0]
    assert f.events == ["forward: first call", "forward: args[1] is 2.0, but the capture specialised on 1.0"]


def test_progress_is_silent_off_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("MEMBOUND_PROGRESS", raising=False)
    with progress.bar("work", total=3) as bar:
        bar.update(1)
    assert capsys.readouterr().err == ""
