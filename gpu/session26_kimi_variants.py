# Session 26: which part of Kimi Linear decodes wrong tokens on cuda with the Triton backend (MLA, MoE or KDA):
# hf_families check of kimi-linear and four variants of its config. PYTHONPATH=. python gpu/session26_kimi_variants.py
import sys, copy
sys.path.insert(0, ".")
import benches.hf_families as H
base = H.FAMILIES["kimi-linear"]
variants = {
    "kimi": {},
    "kimi-no-mla": dict(layer_types=["linear_attention", "linear_attention"]),
    "kimi-no-moe": dict(mlp_layer_types=["dense", "dense"]),
    "kimi-kda-only": dict(layer_types=["linear_attention", "linear_attention"], mlp_layer_types=["dense", "dense"]),
    "kimi-mla-only": dict(layer_types=["full_attention", "full_attention"], mlp_layer_types=["dense", "dense"]),
}
for name, over in variants.items():
    kw = dict(base[2]); kw.update(over)
    H.FAMILIES[name] = (base[0], base[1], kw) + tuple(base[3:])
    for backend in ("triton",):
        r = H.check(name, backend, device="cuda")
        print(f"{name:16s} {backend:8s} {r['status']:12s} {r.get('mismatches', '')} {r.get('error', '')[:200]}", flush=True)
