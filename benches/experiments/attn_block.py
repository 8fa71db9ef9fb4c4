"""Experiment (issue 13): does one launch for a decode layer's attention block (``kernels/attn_block.py``) beat the
library's chain of kernels for it, inside a CUDA-graph chain of layers?

Session 15's profile put the attention block (norm -> q/k/v -> rope + cache write -> attention -> o) at ~19 us a
layer at the Llama-3.2-1B shape for ~5 us of weights, ~39.5 us at 8B for ~20 us: the step's largest loss at batch 1.
Fusing launches one at a time did not pay under PDL (session 17). ``attention_block`` replaces the whole block with
one grid whose work items wait on each other through counters, each program's weight tile loaded before the PDL
wait (the o projection streams while attention runs).

Timed per layer (L distinct layers' weights, so nothing stays in L2; batch 1, bf16; median of CUDA-graph
replays), every chain followed by the same MLP (``rms_norm`` -> ``linear_glu`` -> ``linear_add``):

- ``library``: ``rms_norm`` -> ``linear_rope`` (q/k/v, q and k rotated) -> ``cache_write`` k -> ``cache_write`` v ->
  ``cached_attention`` -> ``linear_add`` (o + residual): 9 launches a layer with the MLP (the default compiled step
  runs 8: its rotation and both cache writes are one generated kernel);
- ``block <config>``: ``attention_block`` with the MLP: 4 launches a layer; a sweep of tile rows, warps, splits
  and grid size (one program per item, or persistent: SMs or 2 x SMs programs);
- ``block+mlp ...``: ``attention_block`` (its picked config) and the MLP as one ``mlp_block`` (``kernels/mlp_block.py``,
  session 19): 2 launches a layer; the MLP's grid one program per item, or persistent (2 x SMs programs).

Both with and without programmatic dependent launch. Checked first: the last layer's output of each chain against
the library chain's (bf16: 5e-2 after L layers of random weights scaled to keep O(1) values). Reported: us a layer,
launches a layer, and % of read bandwidth (bytes a layer must read: its weights and the live K/V cache; the read
bandwidth of ``x.sum()`` over 2 GiB in the same run). Writes ``$OUT/attn_block.json``.

    python benches/experiments/attn_block.py [--models llama-1b,llama-8b] [--contexts 256,4096] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches._timing import graph_time  # noqa: E402
from membound.backends.triton.kernels import _launch  # noqa: E402
from membound.backends.triton.kernels._launch import sm_count  # noqa: E402
from membound.backends.triton.kernels.attn_block import AttnBlockConfig, attention_block, pick_config  # noqa: E402
from membound.backends.triton.kernels.cache_write import cache_write  # noqa: E402
from membound.backends.triton.kernels.decode_attention import cached_attention  # noqa: E402
from membound.backends.triton.kernels.linear import linear_add, linear_glu, linear_rope  # noqa: E402
from membound.backends.triton.kernels.mlp_block import MlpBlockConfig, mlp_block  # noqa: E402
from membound.backends.triton.kernels.mlp_block import pick_config as pick_mlp  # noqa: E402
from membound.backends.triton.kernels.norm import rms_norm  # noqa: E402

# (hidden K, q heads, kv heads, head dim, MLP width, layers)
MODELS = {"llama-1b": (2048, 32, 8, 64, 8192, 16), "llama-8b": (4096, 32, 8, 128, 14336, 32),
          "tiny": (48, 4, 2, 16, 40, 2)}  # tiny: --smoke (CPU, the Triton interpreter: the script's own check)
EPS = 1e-5
DTYPE = torch.bfloat16  # (--smoke: fp16, the interpreter's bf16 is broken)


class Layer:
    def __init__(self, k: int, hq: int, hkv: int, d: int, ffn: int, cap: int, dev: torch.device, gen) -> None:
        def w(*shape: int) -> torch.Tensor:
            return (torch.randn(shape, device=dev, generator=gen) * shape[-1] ** -0.5).to(DTYPE)

        self.norm1 = (1 + 0.1 * torch.randn(k, device=dev, generator=gen)).to(DTYPE)
        self.norm2 = (1 + 0.1 * torch.randn(k, device=dev, generator=gen)).to(DTYPE)
        self.qkv = w((hq + 2 * hkv) * d, k)
        self.o = w(k, hq * d)
        self.gate_up = w(2 * ffn, k)
        self.down = w(k, ffn)
        self.k_cache = torch.randn(1, hkv, cap, d, device=dev, generator=gen).to(DTYPE)
        self.v_cache = torch.randn(1, hkv, cap, d, device=dev, generator=gen).to(DTYPE)

    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in (self.norm1, self.norm2, self.qkv, self.o, self.gate_up, self.down))


def mlp(h: torch.Tensor, layer: Layer) -> torch.Tensor:
    g = linear_glu(rms_norm(h, layer.norm2, eps=EPS), layer.gate_up, static_weight=True)
    return linear_add(g, layer.down, h, static_weight=True)


def library_layer(h, layer: Layer, cos, sin, pos, ctx: int, dims) -> torch.Tensor:
    k, hq, hkv, d = dims
    qkv = linear_rope(rms_norm(h, layer.norm1, eps=EPS), layer.qkv, cos, sin, head_dim=d, rope_cols=(hq + hkv) * d,
                      static_weight=True)
    q = qkv[..., :hq * d].reshape(1, 1, hq, d).transpose(1, 2)
    kn = qkv[..., hq * d:(hq + hkv) * d].reshape(1, 1, hkv, d).transpose(1, 2)
    vn = qkv[..., (hq + hkv) * d:].reshape(1, 1, hkv, d).transpose(1, 2)
    cache_write(layer.k_cache, kn, pos.reshape(1))
    cache_write(layer.v_cache, vn, pos.reshape(1))
    a = cached_attention(q, layer.k_cache, layer.v_cache, pos.reshape(1), max_len=ctx, static_past=True)
    h = linear_add(a.transpose(1, 2).reshape(1, 1, hq * d), layer.o, h, static_weight=True)
    return mlp(h, layer)


def block_layer(h, layer: Layer, cos, sin, pos, ctx: int, dims, config: AttnBlockConfig) -> torch.Tensor:
    k, hq, hkv, d = dims
    h = attention_block(h, layer.norm1, layer.qkv, cos, sin, layer.k_cache, layer.v_cache, pos, layer.o, eps=EPS,
                        num_heads=hq, num_kv_heads=hkv, head_dim=d, config=config)
    return mlp(h, layer)


def layer_of_two(h, layer: Layer, cos, sin, pos, ctx: int, dims, config: AttnBlockConfig,
                 mlp_config: MlpBlockConfig) -> torch.Tensor:
    """The attention block and the MLP block: 2 launches a layer."""
    k, hq, hkv, d = dims
    h = attention_block(h, layer.norm1, layer.qkv, cos, sin, layer.k_cache, layer.v_cache, pos, layer.o, eps=EPS,
                        num_heads=hq, num_kv_heads=hkv, head_dim=d, config=config)
    return mlp_block(h, layer.norm2, layer.gate_up, layer.down, eps=EPS, config=mlp_config)


def read_bandwidth(dev: torch.device) -> float:
    big = torch.randn(1 << 30, dtype=DTYPE, device=dev)
    return big.nbytes / graph_time(big.sum)


def configs(model: str, ctx: int, dims, dev: torch.device, quick: bool) -> list[AttnBlockConfig]:
    k, hq, hkv, d = dims
    base = pick_config(k, hq, hkv, d, ctx, DTYPE, dev)
    sms = sm_count(dev)
    out = [base]
    rows_opts = (base.rows // 2, base.rows, base.rows * 2) if not quick else (base.rows, base.rows * 2)
    for rows in rows_opts:
        for warps in ((4, 8) if not quick else (8,)):
            for programs in (None, sms, 2 * sms):
                c = AttnBlockConfig(rows=max(2, rows), splits=base.splits, block_t=base.block_t, num_warps=warps,
                                    programs=programs)
                if c not in out:
                    out.append(c)
    for splits in (base.splits * 2, base.splits * 4):
        out.append(AttnBlockConfig(rows=base.rows, splits=splits, block_t=base.block_t, num_warps=8))
    out.append(AttnBlockConfig(rows=base.rows, splits=base.splits, block_t=base.block_t, num_warps=8, num_stages=3))
    out.append(AttnBlockConfig(rows=base.rows, splits=base.splits, block_t=base.block_t, num_warps=8,
                               num_stages=base.num_stages, early_kv=True))
    return out


def describe(c: AttnBlockConfig) -> str:
    grid = "items" if c.programs is None else f"{c.programs}p"
    return f"block r{c.rows} s{c.splits} t{c.block_t} w{c.num_warps} st{c.num_stages}{' early' if c.early_kv else ''} {grid}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="llama-1b,llama-8b")
    ap.add_argument("--contexts", default="256,4096")
    ap.add_argument("--quick", action="store_true", help="8 warps, the default tile rows and twice them, the grid choices")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--smoke", action="store_true",
                    help="CPU under TRITON_INTERPRET=1, the tiny model, one call a variant (not a timing)")
    args = ap.parse_args()
    global graph_time, DTYPE
    if args.smoke:
        dev, DTYPE = torch.device("cpu"), torch.float16
        args.models, args.contexts, args.quick = "tiny", "20", True

        def graph_time(fn: Callable, replays: int = 1) -> float:  # noqa: F811 - one plain call
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
        bw = 1e9
    else:
        dev = torch.device("cuda")
        bw = read_bandwidth(dev)
    t0 = time.time()
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (smoke)"
    print(f"read bandwidth {bw / 1e9:.0f} GB/s (x.sum over 2 GiB); {device_name}", flush=True)
    results = []

    def save() -> Path:
        out = Path(args.out) / "attn_block.json"
        out.write_text(json.dumps(dict(device=device_name, read_bw=bw, seconds=time.time() - t0,
                                       formula="pct_read_bw = (layer weights + live K/V cache bytes) / read_bw / "
                                               "time per layer",
                                       results=results), indent=1))
        return out

    for model in args.models.split(","):
        k, hq, hkv, d, ffn, n_layers = MODELS[model]
        dims = (k, hq, hkv, d)
        for ctx in (int(c) for c in args.contexts.split(",")):
            gen = torch.Generator(device=dev).manual_seed(0)
            cap = max(ctx + 64, 256)
            layers = [Layer(k, hq, hkv, d, ffn, cap, dev, gen) for _ in range(n_layers)]
            ang = torch.rand(d // 2, device=dev, generator=gen) * 6.28
            cos = torch.cat([ang.cos(), ang.cos()]).to(DTYPE)
            sin = torch.cat([ang.sin(), ang.sin()]).to(DTYPE)
            x0 = torch.randn(1, 1, k, device=dev, generator=gen).to(DTYPE)
            pos = torch.tensor([ctx - 1], device=dev)
            cache_bytes = 2 * hkv * ctx * d * 2
            layer_bytes = layers[0].weight_bytes() + cache_bytes
            snapshot = [(ly.k_cache.clone(), ly.v_cache.clone()) for ly in layers]

            def restore() -> None:
                for ly, (kc, vc) in zip(layers, snapshot):
                    ly.k_cache.copy_(kc)
                    ly.v_cache.copy_(vc)

            def chain(step: Callable) -> Callable[[], torch.Tensor]:
                def run() -> torch.Tensor:
                    h = x0
                    for ly in layers:
                        h = step(h, ly)
                    return h
                return run

            variants: list[tuple[str, Callable, int]] = [
                ("library", chain(lambda h, ly: library_layer(h, ly, cos, sin, pos, ctx, dims)), 9)]
            for c in configs(model, ctx, dims, dev, args.quick):
                variants.append((describe(c), chain(lambda h, ly, c=c: block_layer(h, ly, cos, sin, pos, ctx, dims,
                                                                                       c)), 4))
            base = pick_config(k, hq, hkv, d, ctx, DTYPE, dev)
            mlp_base = pick_mlp(k, ffn, DTYPE)
            mlp_configs = [mlp_base] + ([MlpBlockConfig(rows=mlp_base.rows, programs=2 * sm_count(dev))]
                                        if dev.type == "cuda" else [])
            for mc in mlp_configs:
                grid = "items" if mc.programs is None else f"{mc.programs}p"
                variants.append((f"block+mlp r{mc.rows} {grid}",
                                 chain(lambda h, ly, mc=mc: layer_of_two(h, ly, cos, sin, pos, ctx, dims, base, mc)),
                                 2))
            restore()
            want = variants[0][1]().float()
            for pdl_mode in (1, 0):
                _launch.set_pdl_mode(pdl_mode)
                for name, fn, launches in variants:
                    row = dict(model=model, context=ctx, variant=name, pdl=bool(pdl_mode), launches=launches,
                               layers=n_layers, layer_bytes=layer_bytes)
                    try:
                        restore()
                        got = fn().float()
                        err = (got - want).abs().max().item()
                        row["max_err"], row["max_abs"] = err, want.abs().max().item()
                        row["ok"] = bool(err <= 5e-2 * max(1.0, want.abs().max().item()))
                        restore()
                        sec = graph_time(fn, replays=20)
                        row["us_per_layer"] = sec / n_layers * 1e6
                        row["pct_read_bw"] = 100 * layer_bytes / bw / (sec / n_layers)
                    except Exception as e:  # noqa: BLE001 - one variant failing must not lose the others
                        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    results.append(row)
                    print(json.dumps(row), flush=True)
            _launch.set_pdl_mode(None)
            del layers, snapshot
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            save()  # after every case: a run cut short by its timeout keeps what it measured
    out = save()
    print(f"\n{'model':9s} {'ctx':>5s} {'pdl':>3s} {'library us':>10s} {'%bw':>5s} | {'pick us':>8s} {'%bw':>5s} | "
          f"{'best block variant':30s} {'us':>7s} {'%bw':>5s}  (us a layer, attention block + MLP)")
    for key in dict.fromkeys((r["model"], r["context"], r["pdl"]) for r in results):
        rows = [r for r in results if (r["model"], r["context"], r["pdl"]) == key]
        lib = next((r for r in rows if r["variant"] == "library" and "us_per_layer" in r), None)
        blocks = [r for r in rows if r["variant"] != "library" and r.get("ok")]
        pick = blocks[0] if blocks and blocks[0]["variant"] == rows[1]["variant"] else None
        best = min(blocks, key=lambda r: r["us_per_layer"], default=None)

        def cell(r: Optional[dict], w: int) -> str:
            return f"{r['us_per_layer']:{w}.2f} {r['pct_read_bw']:5.1f}" if r else f"{'-':>{w}s} {'-':>5s}"
        print(f"{key[0]:9s} {key[1]:5d} {int(key[2]):3d} {cell(lib, 10)} | {cell(pick, 8)} | "
              f"{(best['variant'] if best else 'none ok'):30s} {cell(best, 7)}")
    failed = [r for r in results if not r.get("ok")]
    if failed:
        print(f"{len(failed)} variants failed or disagreed with the library chain; see the JSON")
    print(f"wrote {out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
