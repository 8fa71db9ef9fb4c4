"""Experiment (issue 13, session 30): the o projection merges flash decoding's partials (``attention_linear``).

At the 1.24B shape, batch 1, context 256, flash decoding is 7.9 us of the decode step's path a layer (H100,
session 29's profile): 8 programs, one per kv head, each stream three 128-slot key tiles one after another, and
a split would add a merge (partial stores, an arrival atomic, the last program's reads: ~4.5 us on the H200).
``attention_linear`` splits down to one tile a program and stores the partials only; the o projection's GEMV,
whose weights are loaded before its PDL wait, merges them as it loads x.

Timed: chains of ``L`` layers of (attention -> o projection), the o output of a layer the next layer's q (so each
link waits on the one before, as in the step), replayed from a CUDA graph under programmatic dependent launch,
in us a layer. Contenders: ``apart`` (``cached_attention`` then ``linear``, the library's defaults: the step's
chain today), ``split-merge`` (the same with ``DIRECT_TILES = LEAST_TILES = 1``: split, the last program merges),
``merged`` (``attention_linear``). Shapes: 1.24B (32 / 8 heads, D = 64, hidden 2048) and 8B (32 / 8, D = 128,
4096), batch 1 and 8, filled 257 / 1025 / 4097 slots in a cache of twice the power of two below (the graph
step's path: no known length). Checked first: ``merged`` against ``apart`` on one layer (bf16, atol 3e-2,
rtol 3e-2). Writes ``$OUT/attn_o_merge.json`` (or ``--out``).

    PYTHONPATH=. python benches/experiments/attn_o_merge.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches._timing import graph_time  # noqa: E402
from membound.backends.triton.kernels import decode_attention as da  # noqa: E402
from membound.backends.triton.kernels.decode_attention import cached_attention  # noqa: E402
from membound.backends.triton.kernels.linear import attention_linear, linear  # noqa: E402

SHAPES = {"1.24B": (32, 8, 64), "8B": (32, 8, 128)}


def chain(kind: str, q0: torch.Tensor, caches: list[tuple[torch.Tensor, torch.Tensor]], wos: list[torch.Tensor],
          pos: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One call of the L-layer chain: layer l's o output, viewed as heads, is layer l + 1's q."""
    b, hq, _, d = q0.shape

    def run() -> torch.Tensor:
        q = q0
        y = q0
        for (k, v), wo in zip(caches, wos):
            if kind == "merged":
                y = attention_linear(q, k, v, pos, wo, static_weight=True, static_past=True)
            else:
                o = cached_attention(q, k, v, pos, static_past=True)
                y = linear(o.transpose(1, 2).reshape(b, 1, hq * d), wo, static_weight=True)
            q = y.view(b, 1, hq, d).transpose(1, 2)
        return y

    return run


def case(shape: str, b: int, filled: int, layers: int, kinds: list[str]) -> dict:
    hq, hkv, d = SHAPES[shape]
    cap = 2 * (1 << (filled - 1).bit_length() - 1) if filled > 1 else 2
    dev, dt = "cuda", torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(filled + b + d)
    hidden = hq * d
    q0 = torch.randn(b, hq, 1, d, device=dev, dtype=dt, generator=gen)
    caches = [(torch.randn(b, hkv, cap, d, device=dev, dtype=dt, generator=gen),
               torch.randn(b, hkv, cap, d, device=dev, dtype=dt, generator=gen)) for _ in range(layers)]
    wos = [(torch.randn(hidden, hidden, device=dev, dtype=torch.float32, generator=gen) / hidden ** 0.5).to(dt)
           for _ in range(layers)]
    pos = torch.full((b, 1), filled - 1, device=dev, dtype=torch.long)
    row = dict(shape=shape, batch=b, filled=filled, capacity=cap, layers=layers)
    # correctness: one layer, merged against apart
    ref = chain("apart", q0, caches[:1], wos[:1], pos)()
    got = chain("merged", q0, caches[:1], wos[:1], pos)()
    err = (got.float() - ref.float()).abs().max().item()
    row["max_abs_err"] = err
    row["ok"] = bool(torch.allclose(got.float(), ref.float(), atol=3e-2, rtol=3e-2))
    saved = (da.DIRECT_TILES, da.LEAST_TILES)
    for kind in kinds:
        try:
            if kind == "split-merge":
                da.DIRECT_TILES, da.LEAST_TILES = 1, 1
            row[kind] = graph_time(chain("merged" if kind == "merged" else "apart", q0, caches, wos, pos),
                                   replays=20) / layers * 1e6
        except Exception as e:  # noqa: BLE001 (a failed contender is a row, not the end of the run)
            row[kind] = None
            row[kind + "_error"] = f"{type(e).__name__}: {e}"[:300]
        finally:
            da.DIRECT_TILES, da.LEAST_TILES = saved
    return row


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1.24B and 8B at batch 1 and 8, context 257 only")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args(argv)
    kinds = ["apart", "split-merge", "merged"]
    rows = []
    fills = [257] if args.quick else [257, 1025, 4097]
    for shape in SHAPES:
        for b in (1, 8):
            for filled in fills:
                row = case(shape, b, filled, args.layers, kinds)
                rows.append(row)
                print(json.dumps(row), flush=True)
    dev = torch.cuda.get_device_name()
    out = Path(args.out) / "attn_o_merge.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(device=dev, torch=torch.__version__, rows=rows), indent=1))
    print(f"{dev}: us a layer (attention -> o projection, CUDA graph, PDL)")
    print(f"{'shape':6} {'b':>2} {'filled':>6} {'apart':>8} {'split-merge':>11} {'merged':>8} {'ok':>3}")
    for r in rows:
        cells = [f"{r[k]:8.2f}" if r.get(k) is not None else "    fail" for k in kinds]
        print(f"{r['shape']:6} {r['batch']:2d} {r['filled']:6d} {cells[0]} {cells[1]:>11} {cells[2]} "
              f"{'y' if r['ok'] else 'N'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
