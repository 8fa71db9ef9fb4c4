"""Mixture-of-experts decode and prefill: Hugging Face, torch.compile and membound on the same weights, one run.

    PYTHONPATH=. python benches/moe.py                 # GPU: mixtral-small and mixtral-8x7b cut to 8 layers
    PYTHONPATH=. python benches/moe.py --quick         # GPU: mixtral-small only, batch 1 and 8, fewer tokens
    PYTHONPATH=. python benches/moe.py --smoke         # CPU: a tiny shape, eager contenders only (plumbing)

Shapes (random bf16 weights, built-in ``membound.models.Mixtral``): ``small`` = 1024 hidden, 8 layers,
8 experts top-2, I = 3584; ``8x7b-8l`` = Mixtral-8x7B (4096 hidden, I = 14336, 32/8 heads) cut to 8 layers.
Every contender runs the same tensors (HF's concatenated gate/up is the one copy):

- ``hf eager``: ``transformers.MixtralForCausalLM.generate`` (dynamic cache) — batch 1 only;
- ``hf static``: ``generate(..., cache_implementation="static")``, which compiles itself — batch 1 only;
- ``hf compile``: ``torch.compile(model.forward, fullgraph=True)`` then generate — a failure is a row;
- ``gather compile``: the gpt-fast recipe written here (``StaticCacheMixtral``: static KV cache, each
  token gathers its experts' weights, ``torch.compile(mode="reduce-overhead", fullgraph=True)`` step;
  ``--cd-tuning`` turns on Inductor's coordinate-descent tuning, gpt-fast's setting, for every compile);
- ``membound``: ``membound.generate(membound.compile(hf_model), ...)`` (fuse-moe, Triton ``moe`` kernels,
  CUDA graphs);
- ``membound int8`` / ``membound int4``: the same with ``quantize="int8"`` / ``QuantConfig("int4",
  group_size=128)`` (``quant_moe``: int8 or int4 experts dequantized in the kernels; quantized linears
  where the cost model says they pay) — batches up to 8, not in ``--quick``;
- ``roofline``: per decode step, the bytes that must be read — non-expert weights (attention, router,
  norms, lm_head; the embedding is gathered), the expected distinct experts per layer (``experts_read``:
  ``E * (1 - (1 - k/E)^B)``, uniform routing), the live K/V —
  over the read bandwidth of ``x.sum()`` on 2 GiB measured in this run. For the quantized rows the
  attention, expert and lm_head weights count at their packed size (int8: 1 byte + a bf16 scale per row;
  int4: half a byte + a bf16 (scale, offset) per group of 128), the router, norms and K/V at bf16.

HF's contenders decode at batch 1 only by default (``--hf-batches 1 8 32`` for all; each batch size
recompiles the static-cache one).

Decode tokens/s = batch * (N - 1) / (t(generate N) - t(generate 1)): the prefill and the first token
cancel. Prefill tokens/s = 512 / t(generate 1 token after a 512-token prompt), batch 1. Before timing,
each contender's first greedy tokens at batch 1 are compared with HF eager's (bf16: a late divergence
is reported, not fatal). JSON to ``benches/results/moe-<gpu>-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))
sys.path.insert(0, str(ROOT))

from decode_e2e import first_line, free_memory, gpu_slug, read_bandwidth, reset_dynamo, sync  # noqa: E402
from static_cache_llama import CachedAttention, KVCache  # noqa: E402

import membound  # noqa: E402
from membound.models.llama import RMSNorm, rope_cos_sin  # noqa: E402
from membound.models.mixtral import Mixtral, MixtralConfig, MoEFeedForward  # noqa: E402

SHAPES = {
    "small": MixtralConfig(vocab_size=32000, dim=1024, n_layers=8, n_heads=16, n_kv_heads=4, intermediate_size=3584,
                           n_experts=8, top_k=2, rope_theta=1e6),
    "8x7b-8l": MixtralConfig(vocab_size=32000, dim=4096, n_layers=8, n_heads=32, n_kv_heads=8,
                             intermediate_size=14336, n_experts=8, top_k=2, rope_theta=1e6),
    "tiny": MixtralConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=96,
                          n_experts=4, top_k=2),
}
CHECK = 8  # greedy tokens compared with HF eager


# ---- the gpt-fast contender: static KV cache, gathered experts ----------------------------------

class CachedMoEBlock(nn.Module):
    def __init__(self, c: MixtralConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(c.dim, c.norm_eps)
        self.attention = CachedAttention(c.dim, c.n_heads, c.n_kv_heads)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.block_sparse_moe = MoEFeedForward(c.dim, c.intermediate_size, c.n_experts, c.top_k)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                input_pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, input_pos)
        return x + self.block_sparse_moe(self.ffn_norm(x))


class StaticCacheMixtral(nn.Module):
    """``forward(idx [B, S], input_pos [S]) -> logits``; the built-in Mixtral's tensors (no copy)."""

    def __init__(self, c: MixtralConfig) -> None:
        super().__init__()
        self.config = c
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(CachedMoEBlock(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.output = nn.Linear(c.dim, c.vocab_size, bias=False)

    @classmethod
    def from_builtin(cls, model: Mixtral) -> "StaticCacheMixtral":
        with torch.device("meta"):
            twin = cls(model.config)
        twin.load_state_dict(model.state_dict(), strict=True, assign=True)
        return twin.eval().requires_grad_(False)

    def setup_caches(self, batch: int, max_len: int) -> None:
        w = self.tok_embeddings.weight
        c = self.config
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch, c.n_kv_heads, max_len, c.head_dim, w.dtype, w.device)
        cos, sin = rope_cos_sin(max_len, c.head_dim, c.rope_theta, w.device, w.dtype)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        mask = torch.ones(max_len, max_len, dtype=torch.bool, device=w.device).tril()
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings(idx)  # [B, S, D]
        cos, sin = self.rope_cos[input_pos], self.rope_sin[input_pos]
        mask = self.causal_mask[None, None, input_pos]
        for layer in self.layers:
            x = layer(x, cos, sin, mask, input_pos)
        return self.output(self.norm(x))


def decode_one(model: StaticCacheMixtral, tok: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """One greedy step, ``tok [B, 1]`` at ``input_pos [1]`` -> ``[B, 1]`` (what torch.compile captures)."""
    return model(tok, input_pos)[:, -1].argmax(dim=-1, keepdim=True)


class GatherContender:
    """gpt-fast's loop: eager prefill, then a compiled one-token step. Caches hold ``max_len`` positions
    and are set up (and the step compiled afresh: static shapes) once per batch size."""

    def __init__(self, model: StaticCacheMixtral, max_len: int, compile_step: bool) -> None:
        self.model, self.max_len, self.compile_step = model, max_len, compile_step
        self.batch = 0
        self.step: Callable[..., torch.Tensor] = decode_one

    def __call__(self, ids: torch.Tensor, new: int) -> torch.Tensor:
        b, s = ids.shape
        if s + new > self.max_len:
            raise ValueError(f"GatherContender: {s} + {new} positions exceed max_len={self.max_len}")
        if b != self.batch:
            reset_dynamo()
            self.model.setup_caches(b, self.max_len)
            self.step = torch.compile(decode_one, mode="reduce-overhead", fullgraph=True) if self.compile_step \
                else decode_one
            self.batch = b
        tok = self.model(ids, torch.arange(s, device=ids.device))[:, -1].argmax(-1, keepdim=True)
        out = [tok]
        for i in range(new - 1):
            tok = self.step(self.model, tok, torch.tensor([s + i], device=ids.device)).clone()
            out.append(tok)
        return torch.cat(out, dim=1)


# ---- Hugging Face ------------------------------------------------------------------------------

def build_hf(model: Mixtral) -> Any:
    """``transformers.MixtralForCausalLM`` holding the built-in's tensors (gate/up concatenated: one copy)."""
    from transformers import MixtralConfig as HFConfig
    from transformers import MixtralForCausalLM

    c = model.config
    hf_cfg = HFConfig(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.intermediate_size,
                      num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                      num_local_experts=c.n_experts, num_experts_per_tok=c.top_k, rms_norm_eps=c.norm_eps,
                      rope_theta=c.rope_theta, max_position_embeddings=4096, tie_word_embeddings=False,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    device = model.tok_embeddings.weight.device
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.tok_embeddings.weight,
                                   "model.norm.weight": model.norm.weight, "lm_head.weight": model.output.weight}
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        a, moe = layer.attention, layer.block_sparse_moe
        sd.update({p + "input_layernorm.weight": layer.attention_norm.weight,
                   p + "post_attention_layernorm.weight": layer.ffn_norm.weight,
                   p + "self_attn.q_proj.weight": a.wq.weight, p + "self_attn.k_proj.weight": a.wk.weight,
                   p + "self_attn.v_proj.weight": a.wv.weight, p + "self_attn.o_proj.weight": a.wo.weight,
                   p + "mlp.gate.weight": moe.gate.weight,
                   p + "mlp.experts.gate_up_proj": torch.cat([moe.w1, moe.w3], dim=1),  # [E, 2I, D]
                   p + "mlp.experts.down_proj": moe.w2})  # [E, D, I]: HF's layout
    with torch.device("meta"):
        hf = MixtralForCausalLM(hf_cfg)
    missing, unexpected = hf.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise KeyError(f"build_hf: missing {missing[:4]}, unexpected {unexpected[:4]}")
    rotary = type(hf.model.rotary_emb)
    hf.model.rotary_emb = rotary(hf_cfg).to(device)
    return hf.eval().requires_grad_(False)


def _hf_greedy(hf: Any, ids: torch.Tensor, new: int, **kw: Any) -> Any:
    """HF's ``generate``: exactly ``new`` greedy tokens after the unpadded prompt ``ids``."""
    return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, **kw)


def hf_generate(hf: Any, ids: torch.Tensor, new: int, **kw: Any) -> torch.Tensor:
    return _hf_greedy(hf, ids, new, **kw)[:, ids.shape[1]:]


def hf_reference(hf: Any, ids: torch.Tensor, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the prompt, HF eager's ``new`` greedy tokens after it, their logits ``[new, V]`` in fp32): what a contender's
    batch-1 tokens are checked against, and, where they diverge, how close HF's own choice was there."""
    out = _hf_greedy(hf, ids, new, output_logits=True, return_dict_in_generate=True)
    logits = torch.stack([step[0].float() for step in out.logits])
    return ids, out.sequences[:, ids.shape[1]:], logits


def divergence(tokens: torch.Tensor, ref: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """``agree_first``: how many of a batch-1 contender's first ``CHECK`` greedy tokens equal HF eager's before the
    first that differs. Where one differs (same prefix up to there), HF's logits at that step say whether it was a
    near-tie: ``hf_margin`` (HF's top logit minus the logit HF gives the contender's token) and ``hf_rank`` (that
    token's rank among HF's, 0 = HF's choice), against ``hf_logit_scale`` (HF's largest |logit| there; a bf16 logit
    is rounded to about 2**-8 of its size)."""
    m = min(CHECK, tokens.shape[1], ref[1].shape[1])
    same = (tokens[0, :m].cpu() == ref[1][0, :m].cpu()).tolist()
    agree = same.index(False) if False in same else m
    row: dict[str, Any] = {"agree_first": agree}
    if agree < m and len(ref) > 2:
        logits = ref[2][agree].cpu()
        ours = int(tokens[0, agree])
        row.update(hf_margin=float(logits.max() - logits[ours]), hf_rank=int((logits > logits[ours]).sum()),
                   hf_logit_scale=float(logits.abs().max()))
    return row


# ---- measuring ---------------------------------------------------------------------------------

def seconds(fn: Callable[[], Any]) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def decode_seconds(call: Callable[[int], Any], n: int, rounds: int = 4) -> tuple[float, float]:
    """The best times of ``call(n)`` and ``call(1)`` (an ``n``-token and a 1-token generate), measured in turns so
    that a burst of load from elsewhere (a busy CI machine) hits both alike. Up to ``rounds`` rounds of two pairs
    until the ``n``-token call is the slower: the decode rate is their difference, so noise larger than the
    decode itself would give an absurd rate; then a RuntimeError names both times instead."""
    full = one = float("inf")
    for _ in range(rounds):
        for _ in range(2):
            full = min(full, seconds(lambda: call(n)))
            one = min(one, seconds(lambda: call(1)))
        if full > one:
            return full, one
    raise RuntimeError(f"timing: the {n}-token call ({full:.4f} s) was not slower than the 1-token call "
                       f"({one:.4f} s) in {rounds} rounds")


# bytes per weight element of the packed formats (K = the dim, 4096 or 1024: the per-row scale is noise)
PACKED = {None: 2.0, "int8": 1.0, "int4": 0.5 + 4 / 128}


def experts_read(n_experts: int, top_k: int, batch: int) -> float:
    """Distinct experts a step of ``batch`` tokens reads, expected when each token picks its ``top_k`` distinct
    experts uniformly: ``E * (1 - (1 - k/E)^B)`` (k at batch 1, all E only as B grows). ``min(E, B*k)``, the
    bound used before, counted 8 experts at Mixtral's b8 where 7.2 are expected, so a run could beat it."""
    return n_experts * (1.0 - (1.0 - top_k / n_experts) ** batch)


def active_bytes(c: MixtralConfig, batch: int, context: int, scheme: Optional[str] = None) -> float:
    """Bytes one decode step must read (see the module docstring); ``scheme``: the quantized weights' format."""
    hd, w, itemsize = c.head_dim, PACKED[scheme], 2
    attn = c.dim * hd * (2 * c.n_heads + 2 * c.n_kv_heads)
    expert = 3 * c.dim * c.intermediate_size
    packed = c.n_layers * (attn + experts_read(c.n_experts, c.top_k, batch) * expert) + c.vocab_size * c.dim
    kv = 2 * c.n_layers * batch * c.n_kv_heads * context * hd
    unpacked = c.n_layers * (c.n_experts * c.dim + 2 * c.dim) + c.dim + kv  # router, norms, K/V: bf16
    return packed * w + unpacked * itemsize


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
        self.dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.rows: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    def row(self, **kw: Any) -> None:
        self.rows.append(kw)
        rate = kw.get("tok_s")
        extra = f"{rate:9.1f} tok/s" if rate is not None else kw.get("error", "")
        print(f"  {kw['shape']:8s} {kw['mode']:7s} b{kw.get('batch', 1):<3d} {kw['contender']:15s} {extra}", flush=True)

    def decode(self, shape: str, name: str, gen: Callable[[torch.Tensor, int], torch.Tensor], vocab: int,
               batches: list[int], ref: tuple[torch.Tensor, ...], bw: float,
               step_bytes: Callable[[int, int], float]) -> None:
        """``ref``: (a batch-1 prompt, HF eager's first greedy tokens after it, their logits: ``hf_reference``);
        ``step_bytes(batch, context)``: the bytes a decode step must read, for the roofline (``active_bytes`` here;
        benches/gpt_oss.py's own)."""
        n, prompt = self.args.new_tokens, self.args.prompt
        for b in batches:
            ids = ref[0] if b == 1 else torch.randint(0, vocab, (b, prompt), device=self.device, generator=self.gen)
            try:
                t0 = time.perf_counter()
                first = gen(ids, n)  # cold: compiles
                cold = time.perf_counter() - t0
                # batch 1: greedy tokens equal to HF eager's before the first divergence (bf16), and how close
                agree = divergence(first, ref) if b == 1 else {"agree_first": None}
                full, one = decode_seconds(lambda k, ids=ids: gen(ids, k), n)
                rate = b * (n - 1) / (full - one)
                roof = b / (step_bytes(b, prompt + n // 2) / (bw * 1e9))
                self.row(shape=shape, mode="decode", batch=b, contender=name, tok_s=rate, cold_s=cold,
                         roofline_tok_s=roof, pct_roofline=100 * rate / roof, **agree,
                         step_ms=1e3 * (full - one) / (n - 1))
            except Exception as e:  # a failure is a row
                self.row(shape=shape, mode="decode", batch=b, contender=name, error=first_line(e))
                break
            finally:
                free_memory()

    def prefill(self, shape: str, name: str, gen: Callable[[torch.Tensor, int], torch.Tensor], vocab: int) -> None:
        ids = torch.randint(0, vocab, (1, self.args.prefill), device=self.device, generator=self.gen)
        try:
            gen(ids, 1)
            t = min(seconds(lambda: gen(ids, 1)) for _ in range(2))
            self.row(shape=shape, mode="prefill", batch=1, contender=name, tok_s=self.args.prefill / t)
        except Exception as e:
            self.row(shape=shape, mode="prefill", batch=1, contender=name, error=first_line(e))
        free_memory()

    def run_shape(self, shape: str, bw: float) -> None:
        a = self.args
        c = SHAPES[shape]
        self.gen = torch.Generator(self.device).manual_seed(0)
        print(f"{shape}: building (bf16 random weights)", flush=True)
        with torch.device("meta"):
            model = Mixtral(c)
        model = model.to(self.dtype).to_empty(device=self.device)  # allocated once, in the bench dtype
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02, generator=self.gen)
            for layer in model.layers:  # RMSNorm weights near 1
                layer.attention_norm.weight.fill_(1.0)
                layer.ffn_norm.weight.fill_(1.0)
            model.norm.weight.fill_(1.0)
        model.eval().requires_grad_(False)
        hf = build_hf(model)
        batches = a.batches
        prompt = torch.randint(0, c.vocab_size, (1, a.prompt), device=self.device, generator=self.gen)
        ref = hf_reference(hf, prompt, max(CHECK, a.new_tokens))
        # the gather-experts contender and membound first, the Hugging Face rows last: a run cut short by
        # --budget-s loses the slowest, weakest contenders, not the ones the goals compare
        contenders: list[tuple[str, Callable[[torch.Tensor, int], torch.Tensor], list[int]]] = []
        gather = GatherContender(StaticCacheMixtral.from_builtin(model), max(a.prompt + a.new_tokens, a.prefill + 1),
                                 compile_step=not a.smoke)
        contenders.append(("gather compile", gather, batches))
        compiled = membound.compile(hf)
        contenders.append(("membound", lambda ids, n: membound.generate(compiled, ids, n)[:, ids.shape[1]:],
                           batches))
        if not a.quick:  # quantized experts (quant_moe) and linears
            for scheme, q in (("int8", "int8"), ("int4", membound.QuantConfig("int4", group_size=128))):
                quantized = membound.compile(hf, quantize=q)
                contenders.append((f"membound {scheme}",
                                   lambda ids, n, m=quantized: membound.generate(m, ids, n)[:, ids.shape[1]:],
                                   [b for b in batches if b <= 8]))
        hf_batches = [b for b in a.hf_batches if b in batches] or [1]
        contenders.append(("hf eager", lambda ids, n: hf_generate(hf, ids, n), hf_batches))
        if not a.smoke:
            contenders.append(("hf static", lambda ids, n: hf_generate(hf, ids, n, cache_implementation="static"),
                               hf_batches))
            hf_compiled = [None]

            def hf_compile(ids: torch.Tensor, n: int) -> torch.Tensor:
                if hf_compiled[0] is None:
                    hf.forward = torch.compile(hf.forward, fullgraph=True)
                    hf_compiled[0] = hf.forward
                return hf_generate(hf, ids, n, cache_implementation="static")

            if not a.quick:
                contenders.append(("hf compile", hf_compile, hf_batches))
        if a.only:
            contenders = [c for c in contenders if c[0] in a.only]
        for name, gen, bs in contenders:
            if a.budget_s and time.perf_counter() - self.started > a.budget_s:
                self.row(shape=shape, mode="decode", contender=name, error="skipped: over --budget-s")
                continue
            scheme = name.split()[1] if name in ("membound int8", "membound int4") else None
            self.decode(shape, name, gen, c.vocab_size, bs, ref, bw,
                        lambda b, ctx, scheme=scheme: active_bytes(c, b, ctx, scheme))
            if (name in ("hf eager", "gather compile") or name.startswith("membound")) and not a.quick:
                self.prefill(shape, name, gen, c.vocab_size)
            if name.startswith("hf "):
                reset_dynamo()
                hf.forward = type(hf).forward.__get__(hf)
        reset_dynamo()
        free_memory()


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=None, choices=sorted(SHAPES))
    p.add_argument("--batches", nargs="+", type=int, default=None)
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--hf-batches", nargs="+", type=int, default=[1], help="HF contenders' decode batches")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--quick", action="store_true", help="small shape, batch 1 and 8, 32 tokens, no hf compile")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shape, eager contenders (plumbing only)")
    p.add_argument("--budget-s", type=float, default=None, help="skip contenders starting later (GPU: 450)")
    p.add_argument("--out", default=str(ROOT / "benches" / "results"))
    p.add_argument("--only", nargs="+", default=None,
                   help="time only these contenders (e.g. 'membound int4'); the others are skipped")
    p.add_argument("--cd-tuning", action="store_true",
                   help="Inductor coordinate_descent_tuning on for every torch.compile contender (gpt-fast's setting)")
    a = p.parse_args(argv)
    if a.smoke:
        a.shapes, a.batches, a.new_tokens, a.prefill = a.shapes or ["tiny"], a.batches or [1, 2], a.new_tokens or 4, 16
    elif a.quick:
        a.shapes, a.batches, a.new_tokens = a.shapes or ["small"], a.batches or [1, 8], a.new_tokens or 32
    a.shapes = a.shapes or ["small", "8x7b-8l"]
    a.batches = a.batches or [1, 8, 32]
    a.new_tokens = a.new_tokens or 64
    if a.budget_s is None and torch.cuda.is_available() and not a.smoke:
        a.budget_s = 450.0
    return a


def main(argv: Optional[list[str]] = None) -> int:
    a = parse_args(argv)
    if a.cd_tuning:
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True  # gpt-fast's setting: faster GEMVs, longer compiles
    bench = Bench(a)
    bw = read_bandwidth(bench.device, 2 << 30 if bench.device == "cuda" else 64 << 20)
    card = torch.cuda.get_device_name() if bench.device == "cuda" else "cpu"
    print(f"{card}: read bandwidth {bw:.0f} GB/s", flush=True)
    with torch.no_grad():
        for shape in a.shapes:
            bench.run_shape(shape, bw)
    write_record("moe", card, bw, a, bench.rows,
                 "batch / (bytes / read_gb_s); bytes = layers * (attention + router + norms + "
                 "E*(1-(1-k/E)^batch) * 3*D*I (experts_read)) + lm_head + K/V of the live context; bf16, except the "
                 "attention, expert and lm_head weights of the membound int8/int4 rows at their packed size (int8 1 "
                 "byte, int4 0.5 + 4/128)")
    return 0


def write_record(bench: str, card: str, bw: float, a: argparse.Namespace, rows: list, roofline: str) -> Path:
    """The run's JSON (``<bench>-<gpu>-<date>[-smoke|-quick].json`` under ``--out``); returns its path."""
    record = {"bench": bench, "card": card, "date": datetime.date.today().isoformat(), "read_gb_s": bw,
              "torch": torch.__version__, "args": vars(a), "rows": rows, "roofline": roofline}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-smoke" if a.smoke else "-quick" if a.quick else ""
    path = out / f"{bench}-{gpu_slug(card)}-{record['date']}{suffix}.json"
    path.write_text(json.dumps(record, indent=1, default=str))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    raise SystemExit(main())
