"""``benches/attention.py --smoke`` on the CPU: the script checks every contender against SDPA (Llama 4's attention
chunks too) and prints its table."""

from pathlib import Path

from _bench_run import run_bench  # (tests/ is on sys.path: pytest's rootdir-less test folder)

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_prints_every_contender() -> None:
    proc = run_bench("attention", "--smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = " ".join(proc.stdout.split())  # (the column widths follow the longest case name)
    for row in ("prefill b2 s37 d16 causal membound", "sdpa expanded kv", "decode b3 cache45", "sdpa gqa",
                "prefill b2 s37 d16 chunk16 membound", "decode b1 cache45 chunk16 membound"):
        assert row in table, proc.stdout
