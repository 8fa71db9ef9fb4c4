"""IR text fuzzing for as long as asked: ``PYTHONPATH=. python benches/fuzz_ir.py --minutes 30``.

Mutates the printed graphs of ``tests/ir/corpus/`` (plus any ``--corpus`` files) with
``membound.ir.fuzz`` and counts outcomes; every variant must parse and verify or fail with
``ParseError`` / ``VerificationError``. Any other exception is printed with the text that caused it
(and written to ``--failures DIR``), and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from membound.ir.fuzz import FuzzFailure, check, mutate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", nargs="*", default=[], help="extra printed graphs (.mir)")
    ap.add_argument("--failures", default=None, help="a folder for the texts that failed")
    args = ap.parse_args()
    import random

    root = Path(__file__).resolve().parent.parent / "tests" / "ir" / "corpus"
    corpus = [p.read_text() for p in sorted(root.glob("*.mir"))] + [Path(p).read_text() for p in args.corpus]
    rng = random.Random(args.seed)
    counts: dict[str, int] = {}
    failures: list[FuzzFailure] = []
    end = time.monotonic() + args.minutes * 60
    while time.monotonic() < end:
        text = mutate(rng.choice(corpus), rng)
        try:
            out = check(text)
        except FuzzFailure as f:
            failures.append(f)
            out = f"FAILED {type(f.error).__name__}"
            print(f"--- {out}: {f.error}\n{text[:2000]}", file=sys.stderr)
            if args.failures:
                d = Path(args.failures)
                d.mkdir(parents=True, exist_ok=True)
                (d / f"failure_{len(failures):04d}.mir").write_text(text)
        counts[out] = counts.get(out, 0) + 1
    total = sum(counts.values())
    print(json.dumps({"cases": total, "minutes": args.minutes, "seed": args.seed, "outcomes": counts,
                      "unexpected": len(failures)}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
