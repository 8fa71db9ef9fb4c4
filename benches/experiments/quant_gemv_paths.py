"""Experiment (2026-12-02, one H200): which M = 1 path should quantized linears take?

    PYTHONPATH=. python benches/experiments/quant_gemv_paths.py     # CUDA GPU, ~1 minute

Times, at M = 1 over the issue-10 shapes: our bf16 GEMV, quant_matmul's FMA GEMV ("current"), its
tensor-core kernel with M padded to 16 ("current TC@M1"), and a prototype GEMV on a planar layout
(``planar_gemv.py``: codes of P planes per 16-bit word so x and the weight tile share one register layout
and no layout conversion runs in the loop). Result: benches/results/quant_gemv_paths-nvidia-h200-2026-12-02.json.
The prototype removed the conversions (39-80 registers instead of 199, no barrier in the loop) but not
the instruction count per code, and int4 lost to the per-plane scale broadcast; the tensor-core path won
for int8 at M = 1, which ``quant_matmul.tensor_cores_at_gemv`` now encodes. The read-bandwidth figure this
script prints is not a bandwidth probe (an int32 sum over bytes); use benches/quant_matmul.py's.
"""
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
import torch
import triton
from planar_gemv import _gemv_planar

from membound.backends.triton.kernels.linear import linear
from membound.ir.ops.quant import dequantize, quantize, unpack_int4

DEV = "cuda" if torch.cuda.is_available() else "cpu"
QUICK = "--smoke" in sys.argv


def pack_planar(qw, scales, scheme, K, TP, group=128):
    """canonical packed -> int16 [N, KQ] planar tiles of P*TP (+ scales unchanged)."""
    P = 2 if scheme == "int8" else 4
    T = P * TP
    if scheme == "int8":
        codes = (qw.to(torch.int16) + 128).to(torch.int32)  # [N, K] 0..255
    else:
        codes = unpack_int4(qw, K).to(torch.int32)
    N = codes.shape[0]
    Kp = -(-K // T) * T
    codes = torch.nn.functional.pad(codes, (0, Kp - K), value=(128 if scheme == "int8" else 0))
    c = codes.view(N, Kp // T, P, TP)
    bits = 8 if scheme == "int8" else 4
    word = torch.zeros(N, Kp // T, TP, dtype=torch.int32, device=codes.device)
    for p in range(P):
        word |= c[:, :, p, :] << (bits * p)
    word = torch.where(word >= 32768, word - 65536, word).to(torch.int16)
    return word.view(N, Kp // P).contiguous()


def planar_call(x, qp, s, scheme, N, K, BN, TP, NW, group=128, out=None):
    out = torch.empty(1, N, dtype=x.dtype, device=x.device) if out is None else out
    grid = (triton.cdiv(N, BN),)
    _gemv_planar[grid](x, qp, s, out, N, K, qp.shape[1], qp.stride(0), s.stride(0),
                       SCHEME=0 if scheme == "int8" else 1, GROUP=group, BLOCK_N=BN, TP=TP, PREFETCH=True,
                       num_warps=NW)
    return out


STREAM = 256 << 20


def time_us(fn, rep_ms=30):
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn(); torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); [fn() for _ in range(3)]; e.record(); torch.cuda.synchronize()
        n = max(1, int(rep_ms / max(s.elapsed_time(e) / 3, 1e-3)))
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=stream):
            for _ in range(n):
                fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(7):
            s.record(); g.replay(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / n)
    return statistics.median(ts) * 1e3


def copies(t):
    n = max(1, math.ceil(STREAM / (t.numel() * t.element_size())))
    return [t] + [t.clone() for _ in range(n - 1)]


def main():
    shapes = [(4096, 4096), (4096, 14336), (14336, 4096), (2048, 8192), (128256, 2048)]
    if QUICK:
        shapes = [(67, 1000)]
    VARIANTS = {"int8": [(4, 256, 4), (8, 256, 4), (4, 512, 4), (2, 256, 2), (8, 128, 4), (16, 256, 8), (2, 512, 2), (8, 512, 8)],
                "int4": [(4, 128, 4), (8, 128, 4), (16, 128, 8), (2, 128, 2), (4, 64, 2), (8, 64, 4), (16, 64, 4), (32, 128, 8)]}
    rows, res = [], []
    torch.manual_seed(0)
    for N, K in shapes:
        w = torch.randn(N, K, device=DEV, dtype=torch.bfloat16) * 0.02
        x = torch.randn(1, K, device=DEV, dtype=torch.bfloat16)
        ws = copies(w)
        xo = torch.empty(1, N, device=DEV, dtype=torch.bfloat16)
        t_bf = time_us(lambda: [linear(x, wi, out=xo) for wi in ws]) / len(ws)
        rows.append((N, K, "ours bf16", t_bf, 2 * N * K, None)); del ws
        for scheme in ("int8", "int4"):
            q, s = quantize(w, scheme, 128)
            ref = (x.float() @ dequantize(q, s, scheme, 128, K, torch.bfloat16).float().T)
            pb = q.numel() * q.element_size() + s.numel() * s.element_size()
            qs = copies(q); ss = [s.clone() for _ in qs]
            from membound.backends.triton.kernels import quant_matmul as qm
            tc = qm.pick_config(16, N, K, scheme, 128, torch.bfloat16, x.device)
            for label, cfg in (("current", None), ("current TC@M1", tc)):
                call = lambda qi, si: qm.quant_linear(x, qi, si, scheme=scheme, group_size=128, in_features=K, config=cfg)
                try:
                    err = float((call(q, s).float() - ref).abs().max() / ref.abs().max())
                    t = time_us(lambda: [call(qi, si) for qi, si in zip(qs, ss)]) / len(qs)
                except Exception as exc:
                    err, t = str(exc)[:100], None
                rows.append((N, K, f"{scheme} {label}", t, pb, err))
            del qs, ss
            for BN, TP, NW in VARIANTS[scheme]:
                try:
                    qp = pack_planar(q, s, scheme, K, TP)
                    got = planar_call(x, qp, s, scheme, N, K, BN, TP, NW)
                    err = float((got.float() - ref).abs().max() / ref.abs().max())
                    qps = copies(qp); ss = [s.clone() for _ in qps]
                    t = time_us(lambda: [planar_call(x, qi, si, scheme, N, K, BN, TP, NW, out=xo) for qi, si in zip(qps, ss)]) / len(qps)
                    del qps, ss
                except Exception as exc:
                    err, t = str(exc)[:100], None
                rows.append((N, K, f"{scheme} planar {BN}x{TP} w{NW}", t, pb, err))
        torch.cuda.empty_cache()
    xs = torch.empty(2 << 30, dtype=torch.uint8, device=DEV)
    t = time_us(lambda: xs.sum(dtype=torch.int32), rep_ms=50)
    bw = (2 << 30) / (t * 1e-6) / 1e9
    out = os.environ.get("OUT", "/tmp")
    with open(os.path.join(out, "exp_planar.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "read_bw_GBs": bw, "rows": rows}, f, indent=1)
    print(f"read bw {bw:.0f} GB/s")
    base = {}
    for N, K, name, t, b, err in rows:
        if name == "ours bf16":
            base[(N, K)] = t
        if t is None:
            print(f"{N:6d}x{K:<6d} {name:28s}  FAILED {err}")
            continue
        gbs = b / (t * 1e-6) / 1e9
        e = f"{err:.1e}" if isinstance(err, float) else ""
        print(f"{N:6d}x{K:<6d} {name:28s} {t:8.2f} us {gbs:6.0f} GB/s {100*gbs/bw:5.1f}% {base[(N,K)]/t:5.2f}x {e}")


if __name__ == "__main__":
    main()
