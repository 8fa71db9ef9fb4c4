# Session 27: where Kimi Linear's KDA-only variant (2 KDA layers, dense MLPs) decodes wrong tokens on cuda with the
# Triton backend (session 26: kimi-mla-only passes, every variant with KDA fails; the CPU interpreter passes).
#   PYTHONPATH=. python gpu/session27_kimi_bisect.py VARIANT
# VARIANT: default | nographs | la-reference (the linear_attention kernels replaced by their references) |
# reference (membound's reference backend) | oracle (HF eager's own tokens: cpu vs cuda, cuDNN TF32 on and off).
# Env variants (MEMBOUND_PDL=0, MEMBOUND_STATE_INPLACE=0, TRITON_INTERPRET=1) are run by the shell script.
import sys
sys.path.insert(0, ".")
import torch
import benches.hf_families as H

base = H.FAMILIES["kimi-linear"]
kw = dict(base[2]); kw.update(layer_types=["linear_attention", "linear_attention"], mlp_layer_types=["dense", "dense"])
H.FAMILIES["kimi-kda-only"] = (base[0], base[1], kw) + tuple(base[3:])
variant = sys.argv[1]
backend = "triton"
if variant == "oracle":
    from membound.testing.model_fuzz import greedy_oracle
    model = H.build("kimi-kda-only")
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(2, H.VOCAB, (n,), generator=gen) for n in H.LENGTHS]
    width = max(H.LENGTHS)
    ids = torch.zeros(len(rows), width, dtype=torch.long); mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r; mask[i, width - len(r):] = 1
    cpu = greedy_oracle(model, ids, mask, H.NEW_TOKENS, hf=True)
    model = model.cuda()
    for tf32 in (True, False):
        torch.backends.cudnn.allow_tf32 = tf32
        gpu = greedy_oracle(model, ids.cuda(), mask.cuda(), H.NEW_TOKENS, hf=True)
        for i, ((tc, mc), (tg, mg)) in enumerate(zip(cpu, gpu)):
            print(f"oracle cudnn.tf32={tf32} row {i}: cpu {tc} cuda {tg} {'same' if tc == tg else 'DIFFER'}; "
                  f"margins cpu {[round(m, 4) for m in mc]} cuda {[round(m, 4) for m in mg]}", flush=True)
    # the last-position logits of the whole prompt, cpu vs cuda (tf32 off), HF eager
    with torch.no_grad():
        lc = model.cpu()(ids[:1, -H.LENGTHS[0]:], use_cache=False).logits.float()
        model = model.cuda()
        for tf32 in (True, False):
            torch.backends.cudnn.allow_tf32 = tf32
            lg = model(ids[:1, -H.LENGTHS[0]:].cuda(), use_cache=False).logits.float().cpu()
            print(f"oracle logits cpu vs cuda (cudnn.tf32={tf32}): max |diff| {float((lc - lg).abs().max()):.3g}, "
                  f"logit std {float(lc.std()):.3g}", flush=True)
    sys.exit(0)
if variant == "notf32":
    torch.backends.cudnn.allow_tf32 = False
if variant == "nographs":
    import membound
    real = membound.compile
    membound.compile = lambda m, **k: real(m, **{**k, "cuda_graphs": False})
if variant == "la-reference":
    from membound.backends.triton.kernels import LIBRARY
    for op in ("linear_attention", "linear_attention_state"):
        LIBRARY.pop(op, None)
if variant == "reference":
    backend = "reference"
r = H.check("kimi-kda-only", backend, device="cuda")
print(f"kimi-kda-only {variant:14s} {r['status']:12s} compared {r.get('tokens_compared')} "
      f"{r.get('mismatches', '')} {r.get('error', '')[:300]}", flush=True)
