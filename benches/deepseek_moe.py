"""DeepSeek-V3-style MoE decode (routing the graph computes: ``moe_experts``): Hugging Face and membound on the
same weights, one run.

    PYTHONPATH=. python benches/deepseek_moe.py            # GPU: the v2-lite-v3 shape cut to 8 layers, batch 1 and 8
    PYTHONPATH=. python benches/deepseek_moe.py --quick    # GPU: 4 layers, 32 tokens, no int8
    PYTHONPATH=. python benches/deepseek_moe.py --smoke    # CPU: a tiny shape, fp32 (plumbing only)

The model is ``transformers.DeepseekV3ForCausalLM``: multi-head latent attention, a dense first layer, then MoE
layers whose router is V3's (sigmoid scores plus a correction bias, top groups, top-k, renormalised and scaled),
which fuse-moe leaves as the graph's ops and whose experts become one ``moe_experts`` a layer. Shape ``v2-lite-v3``:
DeepSeek-V2-Lite's sizes (hidden 2048, 16 heads, KV LoRA rank 512, no Q LoRA, 64 routed experts of I = 1408, top-6,
2 shared experts, vocab 102400; deepseek-ai/DeepSeek-V2-Lite config.json) with V3's router (one group); a synthetic
shape, not a released checkpoint, chosen to fit one GPU at 8 layers (4.6B parameters, 9.2 GB in bf16; the routers and
their correction biases in fp32, as HF loads DeepSeek-V3 checkpoints). Random weights N(0, 0.02), norms 1, the
routers N(0, 0.5) and their correction biases N(0, 0.1) (HF's zeros would tie every score). Contenders:

- ``membound``: ``membound.generate(membound.compile(model), ...)`` (the experts as ``moe_experts``, CUDA graphs);
- ``membound int8``: the same with ``quantize="int8"`` (``quant_moe_experts``; routers left float) — not in
  ``--quick``;
- ``hf eager``: ``model.generate`` (dynamic cache) — batch 1 only unless ``--hf-batches``.

Decode tokens/s = batch * (N - 1) / (t(generate N) - t(generate 1)). Roofline per decode step: every parameter
once except the input embedding (gathered) and the routed experts, of which the expected distinct ones
``E * (1 - (1 - k/E)^B)`` per MoE layer; the live K/V as HF caches it (keys of qk_nope + qk_rope, values of v_head_dim,
per head); over the read bandwidth of ``x.sum()`` in this run (the int8 row counts the experts and linears at int8
plus a bf16 scale per row). JSON to ``benches/results/deepseek_moe-<gpu>-<date>[-quick|-smoke].json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))
sys.path.insert(0, str(ROOT))

from gpt_oss import Bench as GptOssBench  # noqa: E402
from gpt_oss import Contender, hf_moe_args, run_bench  # noqa: E402
from moe import experts_read  # noqa: E402

import membound  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    "v2-lite-v3": dict(vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
                       num_attention_heads=16, num_key_value_heads=16, kv_lora_rank=512, q_lora_rank=None,
                       qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64,
                       num_experts_per_tok=6, n_shared_experts=2, first_k_dense_replace=1, n_group=1, topk_group=1,
                       routed_scaling_factor=1.0, num_hidden_layers=27, max_position_embeddings=4096),
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                 num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=16, qk_nope_head_dim=8,
                 qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
                 first_k_dense_replace=1, n_group=2, topk_group=1, num_hidden_layers=3, max_position_embeddings=256),
}
ROOFLINE = ("batch / (bytes / read_gb_s); bytes = every parameter but the input embedding (gathered) and the routed "
            "experts, + per MoE layer E*(1-(1-k/E)^batch) routed experts, + the live K/V as HF caches it (heads * "
            "(qk_nope + qk_rope + v_head_dim) per token and layer); int8 rows: experts and linears at 1 byte + a "
            "2-byte scale per row")


def build(shape: str, layers: Optional[int], device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """The HF model of ``shape`` cut to ``layers`` layers, random weights (see the module docstring)."""
    import transformers as T

    kw = dict(SHAPES[shape])
    kw.update(num_hidden_layers=layers or kw["num_hidden_layers"], bos_token_id=None, eos_token_id=None,
              pad_token_id=None, tie_word_embeddings=False)
    cfg = T.DeepseekV3Config(**kw)
    with torch.device("meta"):
        model = T.DeepseekV3ForCausalLM(cfg)
    model = model.to(dtype)
    for name, module in model.named_modules():  # HF loads the routers in fp32 (_keep_in_fp32_modules_strict)
        if name.endswith("mlp.gate"):
            module.float()
    model = model.to_empty(device=device)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.rsplit(".", 1)[0].rsplit(".", 1)[-1] and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.5, generator=gen)
            else:
                p.normal_(0.0, 0.02, generator=gen)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(seed)) * 0.1)
        rotary = type(model.model.rotary_emb)
        model.model.rotary_emb = rotary(cfg).to(device)  # (its inv_freq buffer was left empty on meta)
    model.generation_config.eos_token_id = None
    return model.eval().requires_grad_(False)


def step_bytes(model: Any, batch: int, context: int, scheme: Optional[str] = None) -> float:
    """Bytes one decode step must read (see the module docstring)."""
    cfg = model.config
    e, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    total = 0.0
    for name, p in model.named_parameters():
        if name.endswith("embed_tokens.weight"):
            continue
        size = p.numel() * p.element_size()
        if scheme == "int8" and p.dim() >= 2 and not name.endswith("mlp.gate.weight"):
            size = p.numel() + 2 * p.numel() // p.shape[-1]  # codes + a bf16 scale per row
        if ".mlp.experts." in name and p.dim() == 3:  # routed experts: the expected distinct ones of E
            size *= experts_read(e, k, batch) / e
        total += size
    itemsize = next(model.parameters()).element_size()
    per_token = cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
    return total + itemsize * batch * context * per_token * cfg.num_hidden_layers


class Bench(GptOssBench):
    """The gpt-oss bench's rows and contenders over HF DeepSeek-V3, and its int8 twin."""

    name = "deepseek_moe"
    roofline = ROOFLINE

    def build_model(self, shape: str) -> Any:
        return build(shape, self.args.layers, self.device, self.dtype)

    def step_bytes(self, model: Any, batch: int, context: int, scheme: Optional[str]) -> float:
        return step_bytes(model, batch, context, scheme)

    def more_contenders(self, model: Any, hf_batches: list[int]) -> list[Contender]:
        """membound with ``quantize="int8"`` (``quant_moe_experts``), batches up to 8."""
        quantized = membound.compile(model, quantize="int8")
        return [("membound int8", lambda ids, n: membound.generate(quantized, ids, n)[:, ids.shape[1]:],
                 [b for b in self.args.batches if b <= 8], "int8")]


def main(argv: Optional[list[str]] = None) -> int:
    return run_bench(Bench(hf_moe_args(argv, __doc__, SHAPES, "v2-lite-v3", quick="4 layers, batch 1 and 8, 32 "
                                                                                   "tokens, no int8")))


if __name__ == "__main__":
    raise SystemExit(main())
