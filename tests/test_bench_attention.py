"""``benches/attention.py --smoke`` on the CPU: the script checks every contender against SDPA (Llama 4's attention
chunks too), prints its table, and names what SDPA ran (here the CPU's scaled_dot_product ops)."""

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
    ran = [line for line in proc.stdout.splitlines() if line.startswith("sdpa ran ")]
    assert ran and all("scaled_dot_product" in line for line in ran), proc.stdout[-2000:]
