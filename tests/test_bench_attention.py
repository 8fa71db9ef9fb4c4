"""``benches/attention.py --smoke`` on the CPU: the script checks every contender against SDPA (Llama 4's attention
chunks too) and prints its table."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_prints_every_contender() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "benches" / "attention.py"), "--smoke"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = " ".join(proc.stdout.split())  # (the column widths follow the longest case name)
    for row in ("prefill b2 s37 d16 causal membound", "sdpa expanded kv", "decode b3 cache45", "sdpa gqa",
                "prefill b2 s37 d16 chunk16 membound", "decode b1 cache45 chunk16 membound"):
        assert row in table, proc.stdout
