"""Experiment (one H100 run, session 32; issue 12, prefill): the one loop form of Triton's warp specialisation on
Hopper, and tensor-descriptor (TMA) loads again, against SDPA and our pointer-load kernel.

``flash_prefill_hopper.py`` (session 13, H200) tried TMA and ``warp_specialize`` on the two-loop kernel: TMA did
not win, and warp specialisation failed to compile at 128-row blocks. Compiling for sm_90 with Triton 3.6 (the GPU
machine's) on the CPU showed why: Hopper warp specialisation engages (``setmaxnreg`` in the PTX) only at 4 warps,
when the key loop is the kernel's one loop and its body has no runtime branch (a second loop fails the pass, a
branch turns it off silently, 8 warps ignore it). ``_fa_ws1`` is that form: one loop over every visible key tile,
each tile masked without a branch.

A reduced copy of ``_flash_attention_fwd``'s structure: no mask operand, positions, window, soft-cap, sinks or
ALiBi; head dims that need no padding; GQA read in place; causal top-left. Each variant is checked against SDPA
(bf16, max abs error <= 2e-2 on unit-normal inputs) before it is timed; a variant that fails to compile is
reported, not fatal. Prints one table; writes JSON to argv[1].

    PYTHONPATH=. python benches/experiments/flash_prefill_one_loop_ws.py out.json     # CUDA GPU (gpu/session32a.sh)

Measured once (H100, Triton 3.6, ``results/flash_prefill_one_loop_ws-nvidia-h100-...-session32``): the descriptor
loads lose everywhere; warp specialisation gains 3% non-causal at D = 128, loses at D = 64, and returns wrong
results causal (and NaN at 128 x 64 tiles, 3 stages) while the same code without it is right. The "mb" rows of that
run timed the same forms inside membound's kernel (``FlashConfig.tma`` / ``warp_specialize``, commit dabed36), since
reverted; this script times the standalone forms only. ``1loop ws rows-in`` (the rows made inside the loop, a
guess at the causal failure) was added after the run and is untimed.
"""

from __future__ import annotations

import json
import math
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from membound.backends.triton.kernels.decode_attention import LOG2E
from membound.backends.triton.kernels.flash_attention import flash_attention, pick_config


@triton.jit
def _tiles(q, k_desc, v_desc, m_i, l_i, acc, qpos, start, end, hi, qk_scale, BLOCK_N: tl.constexpr,
           MASKED: tl.constexpr, CAUSAL: tl.constexpr, WS: tl.constexpr):
    tn = tl.arange(0, BLOCK_N)
    for n0 in tl.range(start, end, BLOCK_N, warp_specialize=WS and not MASKED):
        k = k_desc.load([n0, 0])
        raw = tl.dot(q, k.T)
        if MASKED:
            ts = n0 + tn
            visible = (ts < hi)[None, :]
            if CAUSAL:
                visible = visible & (ts[None, :] <= qpos[:, None])
            s = tl.where(visible, raw * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
        else:
            m_new = tl.maximum(m_i, tl.max(raw, axis=1) * qk_scale)
            p = tl.exp2(raw * qk_scale - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = v_desc.load([n0, 0])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _head_descriptors(q_ptr, k_ptr, v_ptr, o_ptr, HQ, G, S, L, sqb, sqh, sqs, skb, skh, skt, svb, svh, svt,
                      sob, soh, sos, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                      DV: tl.constexpr):
    """This program's head as four 2-D descriptors (q, K, V, o; GQA: the kv head read in place) and its first
    query row (row blocks in reverse: causal's long ones start first)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    h = (pid_bh % HQ).to(tl.int64)
    b = (pid_bh // HQ).to(tl.int64)
    kvh = h // G
    q_desc = tl.make_tensor_descriptor(q_ptr + b * sqb + h * sqh, shape=[S, D], strides=[sqs, 1],
                                       block_shape=[BLOCK_M, D])
    k_desc = tl.make_tensor_descriptor(k_ptr + b * skb + kvh * skh, shape=[L, D], strides=[skt, 1],
                                       block_shape=[BLOCK_N, D])
    v_desc = tl.make_tensor_descriptor(v_ptr + b * svb + kvh * svh, shape=[L, DV], strides=[svt, 1],
                                       block_shape=[BLOCK_N, DV])
    o_desc = tl.make_tensor_descriptor(o_ptr + b * sob + h * soh, shape=[S, DV], strides=[sos, 1],
                                       block_shape=[BLOCK_M, DV])
    row0 = pid_m * BLOCK_M
    return q_desc, k_desc, v_desc, o_desc, row0


@triton.jit
def _fa_tma(q_ptr, k_ptr, v_ptr, o_ptr, HQ, G, S, L, qk_scale,
            sqb, sqh, sqs, skb, skh, skt, svb, svh, svt, sob, soh, sos,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
            CAUSAL: tl.constexpr, WS: tl.constexpr):
    q_desc, k_desc, v_desc, o_desc, row0 = _head_descriptors(
        q_ptr, k_ptr, v_ptr, o_ptr, HQ, G, S, L, sqb, sqh, sqs, skb, skh, skt, svb, svh, svt, sob, soh, sos,
        BLOCK_M, BLOCK_N, D, DV)
    qpos = row0 + tl.arange(0, BLOCK_M)
    hi = L
    full_end = L
    if CAUSAL:
        hi = tl.minimum(row0 + BLOCK_M, L)
        full_end = tl.minimum(row0 + 1, hi)
    full_hi = (full_end // BLOCK_N) * BLOCK_N
    q = q_desc.load([row0, 0])
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, DV), dtype=tl.float32)
    m_i, l_i, acc = _tiles(q, k_desc, v_desc, m_i, l_i, acc, qpos, 0, full_hi, hi, qk_scale, BLOCK_N,
                           False, CAUSAL, WS)
    m_i, l_i, acc = _tiles(q, k_desc, v_desc, m_i, l_i, acc, qpos, full_hi, hi, hi, qk_scale, BLOCK_N,
                           True, CAUSAL, WS)
    o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    o_desc.store([row0, 0], o.to(o_ptr.dtype.element_ty))


@triton.jit
def _fa_ws1(q_ptr, k_ptr, v_ptr, o_ptr, HQ, G, S, L, qk_scale,
            sqb, sqh, sqs, skb, skh, skt, svb, svh, svt, sob, soh, sos,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
            CAUSAL: tl.constexpr, WS: tl.constexpr, ROWS_IN_LOOP: tl.constexpr = False):
    """One key loop, the mask applied on every tile without a branch: Triton 3.6 warp-specialises a loop on
    Hopper only when it is the kernel's one loop and its body has no runtime branch (a second loop fails to
    compile; a branch silently turns it off), checked by compiling for sm_90 on the CPU."""
    q_desc, k_desc, v_desc, o_desc, row0 = _head_descriptors(
        q_ptr, k_ptr, v_ptr, o_ptr, HQ, G, S, L, sqb, sqh, sqs, skb, skh, skt, svb, svh, svt, sob, soh, sos,
        BLOCK_M, BLOCK_N, D, DV)
    rows = row0 + tl.arange(0, BLOCK_M)
    tn = tl.arange(0, BLOCK_N)
    hi = L
    if CAUSAL:
        hi = tl.minimum(row0 + BLOCK_M, L)
    q = q_desc.load([row0, 0])
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, DV), dtype=tl.float32)
    for n0 in tl.range(0, hi, BLOCK_N, warp_specialize=WS):
        k = k_desc.load([n0, 0])
        qk = tl.dot(q, k.T)
        cols = n0 + tn
        if CAUSAL:
            if ROWS_IN_LOOP:  # the row indices made inside the loop body (session 32's causal WS runs were wrong
                # with them made outside it: a guess at the cause, untimed)
                visible = cols[None, :] <= (row0 + tl.arange(0, BLOCK_M))[:, None]
            else:
                visible = cols[None, :] <= rows[:, None]
        else:
            visible = (cols < L)[None, :]
        s = tl.where(visible, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = v_desc.load([n0, 0])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    o = acc / l_i[:, None]
    o_desc.store([row0, 0], o.to(o_ptr.dtype.element_ty))


def _alloc(size: int, alignment: int, stream):
    return torch.empty(size, device="cuda" if torch.cuda.is_available() else "cpu", dtype=torch.int8)


def fa_tma(q, k, v, *, causal, block_m=128, block_n=64, warps=8, stages=3, ws=False, one_loop=False,
           rows_in_loop=False):
    bsz, hq, s, d = q.shape
    hkv, length, dv = k.shape[1], k.shape[2], v.shape[3]
    o = torch.empty(bsz, hq, s, dv, dtype=q.dtype, device=q.device)
    grid = (triton.cdiv(s, block_m), bsz * hq)
    (_fa_ws1 if one_loop else _fa_tma)[grid](q, k, v, o, hq, hq // hkv, s, length, LOG2E / math.sqrt(d),
                  q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                  v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
                  BLOCK_M=block_m, BLOCK_N=block_n, D=d, DV=dv, CAUSAL=causal, WS=ws,
                  **(dict(ROWS_IN_LOOP=True) if rows_in_loop else {}),
                  num_warps=warps, num_stages=stages)
    return o


VARIANTS = [  # name, kwargs of fa_tma
    ("tma m128n64w8s3", dict(block_m=128, block_n=64, warps=8, stages=3)),
    ("tma m128n128w8s2", dict(block_m=128, block_n=128, warps=8, stages=2)),
    ("tma m128n64w4s3", dict(block_m=128, block_n=64, warps=4, stages=3)),
    ("tma m128n64w8s4", dict(block_m=128, block_n=64, warps=8, stages=4)),
    # one loop, mask on every tile: warp-specialised on Hopper at 4 warps (setmaxnreg in the PTX)
    ("1loop m128n128w4s2", dict(block_m=128, block_n=128, warps=4, stages=2, one_loop=True)),
    ("1loop ws m128n128w4s2", dict(block_m=128, block_n=128, warps=4, stages=2, ws=True, one_loop=True)),
    ("1loop ws m128n64w4s3", dict(block_m=128, block_n=64, warps=4, stages=3, ws=True, one_loop=True)),
    ("1loop ws m128n64w4s2", dict(block_m=128, block_n=64, warps=4, stages=2, ws=True, one_loop=True)),
    ("1loop ws m256n64w4s2", dict(block_m=256, block_n=64, warps=4, stages=2, ws=True, one_loop=True)),
    ("1loop ws m128n128w4s1", dict(block_m=128, block_n=128, warps=4, stages=1, ws=True, one_loop=True)),
    ("1loop ws rows-in m128n128w4s2", dict(block_m=128, block_n=128, warps=4, stages=2, ws=True, one_loop=True,
                                          rows_in_loop=True)),
]


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "flash_prefill_one_loop_ws.json"
    triton.set_allocator(_alloc)
    dev = "cuda"
    shapes = [(4, 32, 8, 4096, 128), (4, 32, 8, 1024, 128), (2, 32, 8, 8192, 128), (4, 32, 8, 4096, 64)]
    rows = []
    for (b, hq, hkv, s, d) in shapes:
        torch.manual_seed(0)
        q = torch.randn(b, hq, s, d, device=dev, dtype=torch.bfloat16)
        k = torch.randn(b, hkv, s, d, device=dev, dtype=torch.bfloat16)
        v = torch.randn(b, hkv, s, d, device=dev, dtype=torch.bfloat16)
        for causal in (True, False):
            flops = 4.0 * b * hq * s * s * d / (2 if causal else 1)
            want = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
            case = f"b{b} s{s} d{d} {'causal' if causal else 'full'}"
            qkv = (q, k, v)
            contenders = [("sdpa", partial(F.scaled_dot_product_attention, *qkv, is_causal=causal, enable_gqa=True)),
                          ("membound ptr", partial(flash_attention, *qkv, causal=causal))]
            contenders += [(n, partial(fa_tma, *qkv, causal=causal, **kw)) for n, kw in VARIANTS]
            for name, fn in contenders:
                row = dict(case=case, contender=name)
                try:
                    t0 = time.time()
                    got = fn()
                    torch.cuda.synchronize()
                    err = (got.float() - want.float()).abs().max().item()
                    row["max_abs_err"] = err
                    row["first_call_s"] = round(time.time() - t0, 2)
                    if not err <= 2e-2:
                        row["error"] = f"wrong: max abs err {err:.3g}"
                    else:
                        ms = triton.testing.do_bench(fn, warmup=25, rep=100)
                        row["ms"] = ms
                        row["tflops"] = flops / ms / 1e9
                except Exception as exc:  # a variant that does not compile is a result, not a failure
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                rows.append(row)
                print(json.dumps(row), flush=True)
    with open(out, "w") as fh:
        json.dump({"device": torch.cuda.get_device_name(), "triton": triton.__version__,
                   "membound_default_config_d128_s4096": str(pick_config(4096, 128, torch.bfloat16, False)),
                   "rows": rows}, fh, indent=1)
    print(f"\n{'case':<24} {'contender':<18} {'TFLOP/s':>8} {'x sdpa':>7}")
    sd = {r["case"]: r.get("tflops") for r in rows if r["contender"] == "sdpa"}
    for r in rows:
        t = r.get("tflops")
        ratio = f"{t / sd[r['case']]:.2f}" if t and sd.get(r["case"]) else "-"
        print(f"{r['case']:<24} {r['contender']:<18} {t if t is None else round(t, 1)!s:>8} {ratio:>7}"
              + (f"  {r['error'][:70]}" if "error" in r else ""))


if __name__ == "__main__":
    main()
