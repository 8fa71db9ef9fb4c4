"""Attention kernels against torch's SDPA: prefill TFLOP/s, decode GB/s and % of read bandwidth.

    PYTHONPATH=. python benches/attention.py             # CUDA GPU, about 4 minutes on an H200
    PYTHONPATH=. python benches/attention.py --quick     # CUDA GPU, a subset, under 2 minutes
    PYTHONPATH=. python benches/attention.py --smoke     # CPU, Triton interpreter, tiny sizes

Prefill (the ``attention`` op): 32 query heads over 8 kv heads, head dim 64 and 128, S = L = 512 ..
8192 with B * S = 16k tokens, causal and not, bf16. Contenders: our flash kernel
(``flash_attention``: K/V read in place by GQA), SDPA with ``enable_gqa=True``, and SDPA on K/V
expanded to the query heads beforehand (not timed: the form whose flash/cuDNN backends are the
fastest). FLOPs = 4 * B * Hq * S * L * D, halved for causal; TFLOP/s = FLOPs / median time. Full mode
adds a sliding window of 1024 and Llama 4's chunked causal attention (chunks of 2048) at S = 8192 (ours skips the
tiles; SDPA takes a materialised mask).

Decode (``cached_attention``, flash-decoding, one new token): 32/8 heads, head dim 128, bf16, cache
length 4k .. 128k, batch 1 .. 64 (cases above 40 GB of cache are skipped). Contenders: ours with
``max_len`` = the filled length; ours as ``generate``'s CUDA-graph step runs it (rows ``membound graph-step
cap=C``: no ``max_len``, a cache of capacity C, the power of two above the filled length, so the grid covers C
in small chunks); SDPA (``enable_gqa``) on the filled prefix. GB/s = (K and V of the
filled slots at kv heads + q + output) / median time, and % of the read bandwidth measured in the
same run (``x.sum()`` over 2 GiB). Full mode adds a window of 4096 over a 32k cache, and chunks of 8192
(the last position of the longest cache reads its chunk).

Method (``/work/shared/BENCHMARKS.md``): every contender is timed inside a CUDA graph
(``triton.testing.do_bench_cudagraph``, median of 10 replays of a graph of many calls), so the time is
the kernels' alone, not the Python launcher's (host work: argument checks, partial buffers): both
contenders do the same work, one call each. The calls cycle through enough copies of their inputs
(>= 256 MB in all) that K and V come from HBM, not from the 50 MB L2 a single copy would stay in.
Random inputs; every contender is checked against SDPA (bf16 tolerance) before it is timed. ``--quick``
also times a few fixed decode configs next to the heuristic's (rows ``membound chunk=N``): the
evidence for tuning ``decode_attention.pick_config``. Writes
``benches/results/attention-<gpu>-<date>.json`` (and a copy under ``--out``); prints the table last.
Use the prefill rows to update ``OURS_EFFICIENCY`` / ``SDPA_EFFICIENCY`` in
``membound/backends/triton/kernels/flash_attention.py`` (the cost rule that picks one per shape).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches._results import gpu_slug, write_record  # noqa: E402

HQ, HKV = 32, 8
MAX_CACHE_BYTES = 40 << 30
ROTATE_BYTES = 256 << 20  # inputs cycled per case: 5x the H200's L2


@dataclass
class Row:
    phase: str          # prefill | decode
    case: str
    contender: str
    us: float
    tflops: float
    gbps: float
    pct_read: float
    max_err: float
    flops: float
    bytes: int


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a subset of the shapes (under a minute)")
    p.add_argument("--smoke", action="store_true", help="CPU + Triton interpreter, tiny sizes (checks the script)")
    p.add_argument("--out", default=None, help="folder for a copy of the result file")
    p.add_argument("--only", choices=("prefill", "decode"), default=None, help="run one half of the bench")
    args = p.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("attention: needs a CUDA GPU (or --smoke for a CPU run at tiny sizes)", file=sys.stderr)
        return 2
    bench = Bench("cpu" if args.smoke else "cuda", args.smoke)
    if args.smoke:
        bench.prefill(dims=(16,), seqs=(37,), tokens=74, heads=(4, 2), attn_chunk=16)
        bench.decode(dims=16, lengths=(45,), batches=(1, 3), heads=(4, 2), chunks=(16,), attn_chunk=16)
    elif args.quick:
        if args.only != "decode":
            bench.prefill(dims=(64, 128), seqs=(1024, 4096), tokens=16384)
        if args.only != "prefill":
            bench.decode(dims=128, lengths=(4096, 32768), batches=(1, 16), chunks=(256, 1024, 4096))
    else:
        if args.only != "decode":
            bench.prefill(dims=(64, 128), seqs=(512, 1024, 2048, 4096, 8192), tokens=16384, window=1024,
                          attn_chunk=2048)
        if args.only != "prefill":
            bench.decode(dims=128, lengths=(4096, 16384, 32768, 131072), batches=(1, 8, 32, 64), window=4096,
                         attn_chunk=8192)
    bench.write(args.out, "quick" if args.quick else "smoke" if args.smoke else "full")
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
        self.sdpa_kernels: dict[str, list[str]] = {}  # "phase case contender" -> what SDPA ran (kernels_of)
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.read_bw = self._read_bandwidth()

    # ---- measuring ---------------------------------------------------------------------------
    def time_s(self, fn: Callable[[], Any]) -> float:
        if self.device == "cuda":
            return self._graph_time_s(fn)
        import time

        fn()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def _graph_time_s(self, fn: Callable[[], Any], calls: int = 20, replays: int = 15) -> float:
        """Median seconds per call of ``fn`` replayed from one CUDA graph of ``calls`` calls. The graph
        is captured on the stream that ran the warm-up (our split kernels make their arrival counters
        per stream, before capture: triton's do_bench_cudagraph warms up on another stream)."""
        torch = self.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                for _ in range(calls):
                    fn()
            graph.replay()
            times = []
            for _ in range(replays):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                graph.replay()
                end.record(stream)
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e-3 / calls)
        torch.cuda.current_stream().wait_stream(stream)
        del graph
        return sorted(times)[len(times) // 2]

    def _read_bandwidth(self) -> float:
        n = (4 << 20) if self.smoke else (2 << 30)  # bytes
        x = self.torch.randn(n // 2, dtype=self.torch.bfloat16, device=self.device, generator=self.gen)
        return x.nbytes / self.time_s(lambda: x.sum())

    def kernels_of(self, call: Callable[[], Any]) -> list[str]:
        """The distinct kernels one ``call`` runs, in order, as torch.profiler names them (CUDA: the device kernels;
        CPU: the scaled_dot_product ops): which SDPA backend (cuDNN, FlashAttention-2, memory-efficient, math) a
        row labelled sdpa timed, which torch picks per shape and version."""
        torch = self.torch
        from torch.profiler import ProfilerActivity, profile

        cuda = self.device == "cuda"
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
            call()
            if cuda:
                torch.cuda.synchronize()
        names: list[str] = []
        for e in prof.events():
            keep = e.device_type == torch.autograd.DeviceType.CUDA if cuda else "scaled_dot_product" in e.name
            if keep and e.name not in names:
                names.append(e.name)
        return names

    def rand(self, *shape: int) -> Any:
        return self.torch.randn(shape, device=self.device, generator=self.gen, dtype=self.dtype)

    def copies(self, nbytes: int) -> int:
        """How many copies of a case's inputs to cycle through so that they do not fit in L2."""
        return 1 if self.smoke else max(1, min(64, -(-ROTATE_BYTES // max(nbytes, 1))))

    def add(self, phase: str, case: str, contender: str, fn: Callable[..., Any], inputs: list[tuple[Any, ...]],
            want: Any, flops: float, nbytes: int) -> None:
        """Check ``fn(*inputs[0])`` against ``want`` (bf16-level tolerance), then time it cycling through
        ``inputs`` (every call reads the next copy)."""
        got = fn(*inputs[0])
        err = float((got.float() - want.float()).abs().max())
        if err > 3e-2 * float(want.float().abs().max()) + 3e-2:
            raise AssertionError(f"{phase} {case} {contender}: max error {err:.3g}")
        if contender.startswith("sdpa"):
            self.sdpa_kernels[f"{phase} {case} {contender}"] = self.kernels_of(lambda: fn(*inputs[0]))
        turn = [0]

        def call() -> Any:
            args = inputs[turn[0] % len(inputs)]
            turn[0] += 1
            return fn(*args)

        t = self.time_s(call)
        self.rows.append(Row(phase, case, contender, t * 1e6, flops / t / 1e12, nbytes / t / 1e9,
                             100 * nbytes / t / self.read_bw, err, flops, nbytes))

    # ---- prefill -----------------------------------------------------------------------------
    def prefill(self, dims: tuple[int, ...], seqs: tuple[int, ...], tokens: int, heads: tuple[int, int] = (HQ, HKV),
                window: Optional[int] = None, attn_chunk: Optional[int] = None) -> None:


        hq, hkv = heads
        for d in dims:
            for s in seqs:
                self._prefill_case(max(1, tokens // s), hq, hkv, s, d)
            if window is not None:
                self._prefill_window(d, max(seqs), tokens, hq, hkv, window)
            if attn_chunk is not None:  # Llama 4's chunked layers: causal within chunks of attn_chunk positions
                self._prefill_window(d, max(seqs), tokens, hq, hkv, None, attn_chunk)

    def _prefill_case(self, b: int, hq: int, hkv: int, s: int, d: int) -> None:
        import torch.nn.functional as F

        from membound.backends.triton.kernels import flash_attention

        sdpa = F.scaled_dot_product_attention
        nbytes = self.torch.empty((), dtype=self.dtype).element_size() * b * s * d * (2 * hq + 2 * hkv)
        gqa = [(self.rand(b, hq, s, d), self.rand(b, hkv, s, d), self.rand(b, hkv, s, d))
               for _ in range(self.copies(nbytes))]
        expanded = [(q, k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)) for q, k, v in gqa]
        for causal in (False, True):
            flops = 4.0 * b * hq * s * s * d / (2 if causal else 1)
            case = f"b{b} s{s} d{d} {'causal' if causal else 'full'}"
            want = sdpa(*expanded[0], is_causal=causal)
            self.add("prefill", case, "membound", partial(flash_attention, causal=causal), gqa, want, flops, nbytes)
            self.add("prefill", case, "sdpa gqa", partial(sdpa, is_causal=causal, enable_gqa=True), gqa, want,
                     flops, nbytes)
            self.add("prefill", case, "sdpa expanded kv", partial(sdpa, is_causal=causal), expanded, want, flops,
                     nbytes)

    def _prefill_window(self, d: int, s: int, tokens: int, hq: int, hkv: int, window: Optional[int],
                        attn_chunk: Optional[int] = None) -> None:
        """A sliding window, or (``attn_chunk``) causal attention within chunks, against SDPA on its mask."""
        import torch.nn.functional as F

        from membound.backends.triton.kernels import flash_attention

        torch = self.torch
        b = max(1, tokens // s)
        nbytes = torch.empty((), dtype=self.dtype).element_size() * b * s * d * (2 * hq + 2 * hkv)
        gqa = [(self.rand(b, hq, s, d), self.rand(b, hkv, s, d), self.rand(b, hkv, s, d))
               for _ in range(self.copies(nbytes))]
        i = torch.arange(s, device=self.device)
        keep = i[None, :] <= i[:, None]
        if window is not None:
            keep = keep & (i[None, :] > i[:, None] - window)
            flops = 4.0 * b * hq * s * min(window, s) * d
            case = f"b{b} s{s} d{d} window{window}"
        else:  # the keys each query sees, summed: i % C + 1 for query i
            keep = keep & (i[None, :] // attn_chunk == i[:, None] // attn_chunk)
            flops = 4.0 * b * hq * float((i % attn_chunk + 1).sum()) * d
            case = f"b{b} s{s} d{d} chunk{attn_chunk}"
        # K/V expanded beforehand: SDPA's memory-efficient backend takes a mask, its GQA path may not
        expanded = [(q, k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)) for q, k, v in gqa]
        want = F.scaled_dot_product_attention(*expanded[0], attn_mask=keep)
        self.add("prefill", case, "membound", partial(flash_attention, causal=True, window=window, chunk=attn_chunk),
                 gqa, want, flops, nbytes)
        self.add("prefill", case, "sdpa expanded kv + mask", partial(F.scaled_dot_product_attention, attn_mask=keep),
                 expanded, want, flops, nbytes)

    # ---- decode ------------------------------------------------------------------------------
    def decode(self, dims: int, lengths: tuple[int, ...], batches: tuple[int, ...], heads: tuple[int, int] = (HQ, HKV),
               window: Optional[int] = None, chunks: tuple[int, ...] = (), attn_chunk: Optional[int] = None) -> None:
        hq, hkv = heads
        d = dims
        e = self.torch.empty((), dtype=self.dtype).element_size()
        for length in lengths:
            for b in batches:
                if 2 * b * hkv * length * d * e > MAX_CACHE_BYTES:
                    continue
                self._decode_case(b, hq, hkv, length, d, None, chunks)
        if window is not None:
            self._decode_case(1, hq, hkv, 32768, d, window)
            self._decode_case(16, hq, hkv, 32768, d, window)
        if attn_chunk is not None:  # Llama 4's chunked layers: the last position reads its chunk only
            self._decode_case(1, hq, hkv, max(lengths), d, None, attn_chunk=attn_chunk)

    def _decode_case(self, b: int, hq: int, hkv: int, length: int, d: int, window: Optional[int],
                     chunks: tuple[int, ...] = (), attn_chunk: Optional[int] = None) -> None:
        import torch.nn.functional as F

        from membound.backends.triton.kernels import cached_attention
        from membound.backends.triton.kernels.decode_attention import pick_config

        torch = self.torch
        seen = length if window is None else min(window, length)
        if attn_chunk is not None:  # the query at position length - 1 sees its chunk up to itself
            seen = (length - 1) % attn_chunk + 1
        e = torch.empty((), dtype=self.dtype).element_size()
        nbytes = e * (2 * b * hkv * seen * d + 2 * b * hq * d)
        pos = torch.full((b, 1), length - 1, dtype=torch.int64, device=self.device)
        ours, theirs = [], []
        for _ in range(self.copies(e * 2 * b * hkv * length * d)):
            q = self.rand(b, hq, 1, d)
            k, v = self.rand(b, hkv, length, d), self.rand(b, hkv, length, d)
            ours.append((q, k, v, pos))
            # SDPA on the slots it must see (views: no copy)
            theirs.append((q, k[:, :, length - seen:], v[:, :, length - seen:]))
        flops = 4.0 * b * hq * seen * d
        size = f"{length // 1024}k" if length >= 1024 else str(length)
        case = f"b{b} cache{size}" + (f" window{window}" if window else "") + (f" chunk{attn_chunk}" if attn_chunk
                                                                                 else "")
        want = F.scaled_dot_product_attention(*theirs[0], enable_gqa=True)
        self.add("decode", case, "membound", partial(cached_attention, max_len=length, window=window, chunk=attn_chunk),
                 ours, want, flops, nbytes)
        self.add("decode", case, "sdpa gqa", partial(F.scaled_dot_product_attention, enable_gqa=True), theirs, want,
                 flops, nbytes)
        if window is None and attn_chunk is None and 2 * 2 * b * hkv * length * d * e <= MAX_CACHE_BYTES:
            # what generate's CUDA-graph step runs: no known length, so the grid covers the capacity (the
            # power-of-two bucket above the filled length) in small chunks and idle programs exit at once
            # as many copies as the known-length row cycles (the bytes a call reads, not the capacity it holds: one
            # copy of a 64k-slot cache holding 32k filled slots is 134 MB read again each call, not enough to leave
            # the L2 at batch 1 as the other rows do), while the copies' memory stays under MAX_CACHE_BYTES
            cap = 1 << length.bit_length()
            held = e * 2 * b * hkv * cap * d
            graph_sets = []
            for q_, k_, v_, pos_ in ours[:max(1, min(len(ours), MAX_CACHE_BYTES // held))]:
                k2 = torch.zeros(b, hkv, cap, d, dtype=self.dtype, device=self.device)
                v2 = torch.zeros_like(k2)
                k2[:, :, :length], v2[:, :, :length] = k_, v_
                graph_sets.append((q_, k2, v2, pos_))
            self.add("decode", case, f"membound graph-step cap={cap}", partial(cached_attention, window=window),
                     graph_sets, want, flops, nbytes)
            del graph_sets
        q = ours[0][0]
        base = pick_config(hq // hkv, b * hkv, length, True, d, q.dtype, q.device)
        for chunk in chunks:  # fixed splits next to the heuristic's: which chunk the cost rule should pick
            block_t = min(base.block_t, chunk)
            if chunk % block_t or chunk >= length:
                continue
            cfg = dataclasses.replace(base, block_t=block_t, chunk=chunk)
            self.add("decode", case, f"membound chunk={chunk}",
                     partial(cached_attention, max_len=length, window=window, config=cfg), ours, want, flops, nbytes)
        if chunks:  # the heuristic before 2026-12-02 (4 programs per SM, one tile each at least, 2 stages)
            from membound.backends.triton.kernels._launch import cdiv, sm_count

            splits = max(1, min(cdiv(4 * sm_count(q.device), b * hkv), cdiv(length, base.block_t)))
            old = dataclasses.replace(base, chunk=cdiv(cdiv(length, splits), base.block_t) * base.block_t,
                                      num_stages=2)
            self.add("decode", case, f"membound old-heuristic chunk={old.chunk}",
                     partial(cached_attention, max_len=length, window=window, config=old), ours, want, flops, nbytes)
        if chunks and base.num_stages != 2:  # the heuristic's split with the old pipelining depth
            cfg = dataclasses.replace(base, num_stages=2)
            self.add("decode", case, f"membound chunk={base.chunk} stages=2",
                     partial(cached_attention, max_len=length, window=window, config=cfg), ours, want, flops, nbytes)

    # ---- reporting ---------------------------------------------------------------------------
    def device_name(self) -> str:
        return self.torch.cuda.get_device_name() if self.device == "cuda" else "cpu-interpreter"

    def write(self, out: Optional[str], mode: str) -> None:
        import triton

        date = datetime.date.today().isoformat()
        name = self.device_name()
        record = {"bench": "attention", "mode": mode, "device": name, "date": date,
                  "versions": {"torch": self.torch.__version__, "triton": triton.__version__},
                  "read_bandwidth_gbps": self.read_bw / 1e9,
                  "formulas": {"prefill_flops": "4*B*Hq*S*L*D, /2 causal, L -> window with a window",
                               "decode_bytes": "bytes(K,V of the slots read at Hkv heads) + bytes(q) + bytes(out)"},
                  "rows": [asdict(r) for r in self.rows], "sdpa_kernels": self.sdpa_kernels}
        fname = f"attention-{gpu_slug(name)}-{date}" + ("" if mode == "full" else f"-{mode}") + ".json"
        self.written = write_record(record, fname, out, self.smoke)

    def print_table(self) -> None:
        print(f"{self.device_name()}: read bandwidth {self.read_bw / 1e9:.0f} GB/s (x.sum() in this run)")
        print(f"wrote {', '.join(str(t) for t in self.written) or '(nothing)'}")
        wc = max(len(r.case) for r in self.rows)
        wk = max(len(r.contender) for r in self.rows)
        print(f"\n{'phase':8s} {'case':{wc}s} {'contender':{wk}s} {'us':>10s} {'TFLOP/s':>8s} {'GB/s':>7s} "
              f"{'% read':>7s}")
        for r in self.rows:
            print(f"{r.phase:8s} {r.case:{wc}s} {r.contender:{wk}s} {r.us:10.1f} {r.tflops:8.1f} {r.gbps:7.0f} "
                  f"{r.pct_read:7.1f}")
        ran: dict[tuple[str, ...], list[str]] = {}
        for row, names in self.sdpa_kernels.items():
            ran.setdefault(tuple(names), []).append(row)
        for names, rows in ran.items():
            shown = "; ".join(n if len(n) <= 90 else n[:87] + "..." for n in names) or "(none recorded)"
            print(f"sdpa ran {shown}: {len(rows)} rows, e.g. {rows[0]}")
        if self.smoke:
            print("[smoke run on CPU under the Triton interpreter: the numbers mean nothing]")


if __name__ == "__main__":
    sys.exit(main())
