"""Do the library kernels stream at HBM bandwidth? Each kernel against the best library, decode shapes.

    PYTHONPATH=. python benches/kernel_bench.py --out DIR          # CUDA GPU, under 2 minutes
    PYTHONPATH=. python benches/kernel_bench.py --smoke --out DIR  # CPU, Triton interpreter, tiny sizes

Shapes: Llama-3.2-1B (hidden 2048, MLP 8192, 32/8 heads of 64) and Llama-3-8B (4096, 14336, 32/8
heads of 128), bf16, batch 1 and 8, one new token:
- ``linear``: the merged q/k/v, o, merged gate/up, down and lm-head projections; ours (default
  heuristic, and the other inner product as a variant) vs cuBLAS (``F.linear``);
- ``cached_attention``: cache length 1k / 4k / 16k; ours with ``max_len`` = the length, vs SDPA on
  the filled prefix (``enable_gqa``); at 1k also ours in a 16k-capacity cache without ``max_len``;
- ``rms_norm`` / ``add_rms_norm`` / ``cache_write`` / ``embedding``: vs the eager torch ops (tiny,
  launch-bound: their row says how many µs a launch costs, not GB/s).

Method (``/work/shared/BENCHMARKS.md``): ``triton.testing.do_bench`` medians, random inputs, each
kernel checked against the library result before it is timed; GB/s = bytes that must move / time,
and % of the read bandwidth measured in the same run (``x.sum()`` over 2 GiB). Writes
``benches/results/kernels-<gpu>-<date>.json`` (and a copy under ``--out``) and prints the table last.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches._results import gpu_slug, write_record  # noqa: E402


@dataclass(frozen=True)
class Model:
    name: str
    hidden: int
    mlp: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int = 128256


MODELS = [Model("llama-1b", 2048, 8192, 32, 8, 64), Model("llama-8b", 4096, 14336, 32, 8, 128)]
TINY = [Model("tiny", 48, 80, 4, 2, 16, vocab=97)]


@dataclass
class Row:
    kernel: str
    case: str
    contender: str
    us: float
    bytes: int
    gbps: float
    pct_read: float
    max_err: float


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="folder for a copy of the result file")
    p.add_argument("--smoke", action="store_true", help="CPU + Triton interpreter, tiny sizes (checks the script)")
    args = p.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("kernels: needs a CUDA GPU (or --smoke for a CPU run at tiny sizes)", file=sys.stderr)
        return 2
    bench = Bench("cpu" if args.smoke else "cuda", args.smoke)
    bench.run(TINY if args.smoke else MODELS, batches=(1, 3) if args.smoke else (1, 8),
              lengths=(37,) if args.smoke else (1024, 4096, 16384))
    bench.write(args.out)
    bench.print_table()
    return 0


class Bench:
    def __init__(self, device: str, smoke: bool) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.smoke = smoke
        self.dtype = torch.float16 if smoke else torch.bfloat16  # bf16 is broken in the interpreter
        self.rows: list[Row] = []
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.read_bw = self._read_bandwidth()

    # ---- measuring ---------------------------------------------------------------------------
    def time_s(self, fn: Callable[[], Any]) -> float:
        if self.device == "cuda":
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=10, rep=40, return_mode="median")) * 1e-3
        import time

        fn()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def _read_bandwidth(self) -> float:
        torch = self.torch
        n = (4 << 20) if self.smoke else (2 << 30)  # bytes
        x = torch.randn(n // 2, dtype=torch.bfloat16, device=self.device, generator=self.gen)
        return x.nbytes / self.time_s(lambda: x.sum())

    def rand(self, *shape: int, scale: float = 1.0) -> Any:
        return (self.torch.randn(shape, device=self.device, generator=self.gen) * scale).to(self.dtype)

    def add(self, kernel: str, case: str, contender: str, fn: Callable[[], Any], nbytes: int,
            want: Optional[Any] = None) -> None:
        """Check ``fn()`` against ``want`` (bf16-level tolerance), then time it."""
        got = fn()
        err = 0.0
        if want is not None:
            got_t = got[1] if isinstance(got, tuple) else got
            want_t = want[1] if isinstance(want, tuple) else want
            err = float((got_t.float() - want_t.float()).abs().max())
            scale = float(want_t.float().abs().max()) or 1.0
            if err > 3e-2 * scale + 3e-2:
                raise AssertionError(f"{kernel} {case} {contender}: max error {err:.3g} (output scale {scale:.3g})")
        t = self.time_s(fn)
        gbps = nbytes / t / 1e9
        self.rows.append(Row(kernel, case, contender, t * 1e6, nbytes, gbps, 100 * nbytes / t / self.read_bw, err))

    # ---- the cases ---------------------------------------------------------------------------
    def run(self, models: list[Model], batches: tuple[int, ...], lengths: tuple[int, ...]) -> None:
        for model in models:
            for b in batches:
                self.linears(model, b)
                self.attention(model, b, lengths)
                self.small(model, b)

    def linears(self, m: Model, b: int) -> None:
        import torch.nn.functional as F

        from membound.backends.triton.kernels import linear, linear_bytes
        from membound.backends.triton.kernels.linear import pick_config

        kv = m.kv_heads * m.head_dim
        shapes = {"qkv": (m.hidden + 2 * kv, m.hidden), "o": (m.hidden, m.hidden),
                  "gate_up": (2 * m.mlp, m.hidden), "down": (m.hidden, m.mlp), "lm_head": (m.vocab, m.hidden)}
        for name, (n, k) in shapes.items():
            x, w = self.rand(b, k), self.rand(n, k, scale=k ** -0.5)
            case = f"{m.name} {name} b{b} [{n}x{k}]"
            nbytes = linear_bytes(b, n, k, self.dtype)
            want = F.linear(x, w)
            self.add("linear", case, "cublas", lambda x=x, w=w: F.linear(x, w), nbytes)
            cfg = pick_config(b, n, k, self.dtype, x.device)
            self.add("linear", case, f"ours {_describe(cfg)}", lambda x=x, w=w, c=cfg: linear(x, w, config=c),
                     nbytes, want)
            other = _other_inner_product(cfg, b)
            self.add("linear", case, f"ours {_describe(other)}", lambda x=x, w=w, c=other: linear(x, w, config=c),
                     nbytes, want)

    def attention(self, m: Model, b: int, lengths: tuple[int, ...]) -> None:
        import torch.nn.functional as F

        from membound.backends.triton.kernels import cached_attention, cached_attention_bytes

        torch = self.torch
        for length in lengths:
            q = self.rand(b, m.heads, 1, m.head_dim)
            k, v = self.rand(b, m.kv_heads, length, m.head_dim), self.rand(b, m.kv_heads, length, m.head_dim)
            pos = torch.full((b, 1), length - 1, device=self.device)
            case = f"{m.name} decode b{b} kv{length}"
            nbytes = cached_attention_bytes(b, m.heads, m.kv_heads, 1, length, m.head_dim, m.head_dim, self.dtype)
            want = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            self.add("cached_attention", case, "sdpa", lambda q=q, k=k, v=v: F.scaled_dot_product_attention(
                q, k, v, enable_gqa=True), nbytes)
            self.add("cached_attention", case, "ours max_len", lambda q=q, k=k, v=v, p=pos, n=length: cached_attention(
                q, k, v, p, max_len=n), nbytes, want)
            if length == lengths[0] and not self.smoke:
                cap = max(lengths)
                kc, vc = self.rand(b, m.kv_heads, cap, m.head_dim), self.rand(b, m.kv_heads, cap, m.head_dim)
                kc[:, :, :length], vc[:, :, :length] = k, v
                self.add("cached_attention", case, f"ours in {cap} slots, no max_len",
                         lambda q=q, k=kc, v=vc, p=pos: cached_attention(q, k, v, p), nbytes, want)

    def small(self, m: Model, b: int) -> None:
        import torch.nn.functional as F

        from membound.backends.triton.kernels import (
            add_rms_norm,
            cache_write,
            cache_write_bytes,
            embedding,
            rms_norm,
            rms_norm_bytes,
        )
        from membound.ir import get_op

        torch = self.torch
        x, r, w = self.rand(b, 1, m.hidden), self.rand(b, 1, m.hidden), self.rand(m.hidden)
        ref_norm = get_op("rms_norm").reference
        case = f"{m.name} b{b} [{m.hidden}]"
        self.add("rms_norm", case, "eager", lambda: ref_norm(x, w, eps=1e-5), rms_norm_bytes(b, m.hidden, self.dtype))
        self.add("rms_norm", case, "ours", lambda: rms_norm(x, w, eps=1e-5), rms_norm_bytes(b, m.hidden, self.dtype),
                 ref_norm(x, w, eps=1e-5))

        def eager_add_norm() -> tuple[Any, Any]:
            h = x + r
            return h, ref_norm(h, w, eps=1e-5)

        nb = rms_norm_bytes(b, m.hidden, self.dtype, residual=True)
        self.add("add_rms_norm", case, "eager", eager_add_norm, nb)
        self.add("add_rms_norm", case, "ours", lambda: add_rms_norm(x, r, w, eps=1e-5), nb, eager_add_norm())

        cap = 4096 if not self.smoke else 37
        cache = self.rand(b, m.kv_heads, cap, m.head_dim)
        new = self.rand(b, 1, m.kv_heads, m.head_dim).transpose(1, 2)
        pos = torch.full((1,), cap // 2, device=self.device)
        cw = cache_write_bytes(new.numel(), self.dtype)
        self.add("cache_write", f"{m.name} b{b}", "index_copy_", lambda: cache.index_copy_(2, pos, new), cw)
        self.add("cache_write", f"{m.name} b{b}", "ours", lambda: cache_write(cache, new, pos), cw)

        table = self.rand(m.vocab, m.hidden)
        ids = torch.randint(0, m.vocab, (b, 1), device=self.device, generator=self.gen)
        eb = 2 * b * m.hidden * table.element_size()
        self.add("embedding", f"{m.name} b{b}", "F.embedding", lambda: F.embedding(ids, table), eb)
        self.add("embedding", f"{m.name} b{b}", "ours", lambda: embedding(table, ids), eb, F.embedding(ids, table))

    # ---- reporting ---------------------------------------------------------------------------
    def device_name(self) -> str:
        return self.torch.cuda.get_device_name() if self.device == "cuda" else "cpu-interpreter"

    def write(self, out: Optional[str]) -> None:
        import triton

        date = datetime.date.today().isoformat()
        name = self.device_name()
        record = {"bench": "kernels", "device": name, "date": date, "smoke": self.smoke,
                  "versions": {"torch": self.torch.__version__, "triton": triton.__version__},
                  "read_bandwidth_gbps": self.read_bw / 1e9, "rows": [asdict(r) for r in self.rows]}
        self.written = write_record(record, f"kernels-{gpu_slug(name)}-{date}.json", out, self.smoke)

    def print_table(self) -> None:
        print(f"{self.device_name()}: read bandwidth {self.read_bw / 1e9:.0f} GB/s (x.sum() in this run)")
        print(f"wrote {', '.join(str(t) for t in self.written) or '(nothing)'}")
        wc = max(len(r.case) for r in self.rows)
        wk = max(len(r.contender) for r in self.rows)
        print(f"\n{'kernel':16s} {'case':{wc}s} {'contender':{wk}s} {'us':>9s} {'GB/s':>8s} {'% read':>7s}")
        for r in self.rows:
            print(f"{r.kernel:16s} {r.case:{wc}s} {r.contender:{wk}s} {r.us:9.2f} {r.gbps:8.0f} {r.pct_read:7.1f}")
        if self.smoke:
            print("[smoke run on CPU under the Triton interpreter: the numbers mean nothing]")


def _describe(cfg: Any) -> str:
    kind = ("swap" if cfg.swap else "dot") if cfg.use_dot else ("row" if cfg.row else "fma")
    kind += " resident" if cfg.resident else ""
    return f"{kind} {cfg.block_m}x{cfg.block_n}x{cfg.block_k} split{cfg.split_k}"


def _other_inner_product(cfg: Any, m: int) -> Any:
    """The heuristic's config with the other inner product (tensor-core dot <-> register FMA)."""
    from dataclasses import replace

    from membound.backends.triton.kernels._launch import next_pow2

    # (the forms of one inner product do not carry over: swap is a tensor-core form, resident and row register ones)
    if cfg.use_dot:  # keep the register accumulator [BLOCK_M, 16, BLOCK_K] at 64 fp32 per thread
        return replace(cfg, use_dot=False, swap=False, block_m=next_pow2(m), block_n=16,
                       block_k=256 if m <= 2 else 64, num_stages=3)
    return replace(cfg, use_dot=True, resident=False, row=False, split_k=cfg.split_k if not cfg.resident else 1,
                   block_m=16, block_n=32, block_k=128, num_stages=4)


if __name__ == "__main__":
    sys.exit(main())
