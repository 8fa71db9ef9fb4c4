"""Which quant_linear path makes the 8B int8 decode step slower? Per-op and per-layer graphs, GEMV vs TC."""
import json
import os

import torch

from benches._timing import graph_time
from membound.backends.triton.kernels import quant_matmul as qm
from membound.ir.ops.quant import quantize

dev = "cuda"
torch.manual_seed(0)
H, I, V = 4096, 14336, 128256
shapes = {"qkv": (6144, H, False), "o": (H, H, False), "gate_up": (2 * I, H, False), "down_gated": (H, I, True),
          "head": (V, H, False)}
L = 8  # layers' worth of distinct weights (streams from HBM)


def time_graph(fn, n=20):
    """Median microseconds of one replay of a CUDA graph of ``fn``."""
    return graph_time(fn, n) * 1e6


rows = []
from membound.backends.triton.kernels.linear import gated_linear, linear

wb = {}
for name, (n, k, gated) in shapes.items():
    wb[name] = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(2 if name == "head" else L)]
for mm in (1, 16):
    x = torch.randn(mm, H, device=dev, dtype=torch.bfloat16)
    xi = torch.randn(mm, I, device=dev, dtype=torch.bfloat16)
    for name, (n, k, gated) in shapes.items():
        def runb(name=name, k=k, gated=gated):
            for w in wb[name]:
                if gated:
                    gated_linear(xi, xi, w, static_weight=True)
                else:
                    linear(x if k == H else xi, w, static_weight=True)
        us = time_graph(runb) / len(wb[name])
        rows.append(("bf16", f"m{mm}", name, us))
        print(f"bf16 m{mm} {name:11s} {us:8.2f} us", flush=True)
del wb
torch.cuda.empty_cache()
for scheme in ("int8", "int4"):
    ws = {}
    for name, (n, k, gated) in shapes.items():
        reps = 2 if name == "head" else L
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        ws[name] = [quantize(w, scheme, 128) for _ in range(reps)]
        del w
    for mode in ("gemv", "tc", "auto", "m16", "m16-old"):
        mm = 16 if mode.startswith("m16") else 1
        x = torch.randn(mm, H, device=dev, dtype=torch.bfloat16)
        xi = torch.randn(mm, I, device=dev, dtype=torch.bfloat16)

        def cfg_for(n, k):
            if mode in ("auto", "m16"):
                return None
            if mode == "m16-old":
                # int4 with the integer-code dot off; that option (QuantConfig.int4_codes) was removed after this
                # measurement showed it slower, so both modes now run the same kernel
                return qm.pick_config(16, n, k, scheme, 128, torch.bfloat16, x.device)
            rule = qm.tensor_cores_at_gemv
            if mode == "gemv":
                qm.tensor_cores_at_gemv = lambda *a: False  # the FMA GEMV tiles as before 2026-12-02
            try:
                return qm.pick_config(1 if mode == "gemv" else 16, n, k, scheme, 128, torch.bfloat16, x.device)
            finally:
                qm.tensor_cores_at_gemv = rule
        for name, (n, k, gated) in shapes.items():
            cfg = cfg_for(n, k)
            def run(name=name, n=n, k=k, gated=gated, cfg=cfg):
                for q, s in ws[name]:
                    if gated:
                        qm.quant_gated_linear(xi, xi, q, s, scheme=scheme, group_size=128, in_features=k, config=cfg, static_weight=True)
                    else:
                        qm.quant_linear(x if k == H else xi, q, s, scheme=scheme, group_size=128, in_features=k, config=cfg, static_weight=True)
            try:
                us = time_graph(run) / len(ws[name])
            except Exception as e:
                us = None; print(name, mode, e)
            rows.append((scheme, mode, name, us))
            print(f"{scheme} {mode:5s} {name:11s} {us:8.2f} us" if us else f"{scheme} {mode} {name} FAILED", flush=True)
    del ws
    torch.cuda.empty_cache()
os.makedirs(os.environ.get("OUT", "/tmp"), exist_ok=True)
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "exp_layer.json"), "w"))
