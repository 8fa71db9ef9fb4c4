"""Attention forms of real models: sliding windows (Mistral, alternating local/global layers), soft-capping
(Gemma 2), heads flattened into the batch with an ALiBi bias (BLOOM), a causal bias applied with a stored
fill scalar beside an additive mask (GPT-Neo), attention sinks (gpt-oss), chunked attention (Llama 4), eager and sdpa
capture. Each ends in
``attention`` ops and decodes eager's greedy tokens."""

import math

import pytest
import torch

import membound
from membound.api import KVCacheError
from membound.frontends.export import capture_export
from membound.passes import PassContext, PassManager
from membound.passes.pipeline import default_pipeline

from .hf_models import VOCAB, _common
from .test_generate import prompts, recompute


def _hf(name: str, attn: str, window: int = 4) -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(0)
    if name == "mistral":
        m = T.MistralForCausalLM(T.MistralConfig(**_common(), sliding_window=window, attn_implementation=attn))
    elif name == "qwen2-alternating":   # layer 0 global, layer 1 sliding
        m = T.Qwen2ForCausalLM(T.Qwen2Config(**_common(), use_sliding_window=True, sliding_window=window,
                                             max_window_layers=1, attn_implementation=attn))
    elif name == "gemma2":              # soft-capped logits, local/global layers
        m = T.Gemma2ForCausalLM(T.Gemma2Config(**_common(), head_dim=8, sliding_window=window,
                                               attn_logit_softcapping=5.0, attn_implementation=attn))
    elif name == "gpt_neo":             # global then local layers; the causal bias applied by where() with a stored
        #                                     finfo.min scalar, then the additive mask; no score scaling
        m = T.GPTNeoForCausalLM(T.GPTNeoConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                                               attention_types=[[["global", "local"], 1]], window_size=window,
                                               max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                                               attn_implementation=attn))
    elif name == "bloom":               # heads flattened into the batch (baddbmm / bmm), ALiBi added before the view
        m = T.BloomForCausalLM(T.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, bos_token_id=1,
                                             eos_token_id=2, pad_token_id=0, attn_implementation=attn))
    elif name == "llama":
        m = T.LlamaForCausalLM(T.LlamaConfig(**_common(), attn_implementation=attn))
    elif name == "gpt_oss":             # attention sinks; a sliding then a full layer; experts with biases
        m = T.GptOssForCausalLM(T.GptOssConfig(**_common(), head_dim=8, sliding_window=window, num_local_experts=3,
                                               num_experts_per_tok=2, layer_types=["sliding_attention",
                                                                                   "full_attention"],
                                               attn_implementation=attn))
        with torch.no_grad():  # sinks from below to above the scores (HF initialises them near 0)
            for layer in m.model.layers:
                layer.self_attn.sinks.copy_(torch.linspace(-1.0, 3.0, layer.self_attn.sinks.numel()))
    elif name == "granite_swa":         # a sliding then a full layer, each head's sink applied as the output's scale
        #                                     sigmoid(logsumexp(scores) - sink)
        m = T.GraniteSWAForCausalLM(T.GraniteSWAConfig(**_common(), head_dim=8, sliding_window=window,
                                                       attention_multiplier=0.3,
                                                       layer_types=["sliding_attention", "full_attention"],
                                                       attn_implementation=attn))
        with torch.no_grad():  # sinks from below to above the scores (HF initialises them at 0)
            for layer in m.model.layers:
                layer.self_attn.sinks.copy_(torch.linspace(-1.0, 3.0, layer.self_attn.sinks.numel()))
    elif name == "mimo_v2_flash":       # a full layer whose scores' row max is subtracted before the softmax, then a
        #                                     sliding one with gpt-oss's sinks; v heads narrower than q/k's
        m = T.MiMoV2FlashForCausalLM(T.MiMoV2FlashConfig(**_common(), head_dim=8, v_head_dim=4, sliding_window=window,
                                                         n_routed_experts=3, num_experts_per_tok=2,
                                                         moe_intermediate_size=16,
                                                         layer_types=["full_attention", "sliding_attention"],
                                                         mlp_layer_types=["dense", "sparse"], attn_implementation=attn))
        with torch.no_grad():
            sinks = m.model.layers[1].self_attn.sinks
            sinks.copy_(torch.linspace(-1.0, 3.0, sinks.numel()))
    elif name == "llama4":              # layer 0 chunked (chunks of `window`) with RoPE, layer 1 full, NoPE, with the
        #                                     position-dependent attention temperature; q/k L2 norms; experts
        m = T.Llama4ForCausalLM(T.Llama4TextConfig(**_common(), head_dim=8, attention_chunk_size=window,
                                                   no_rope_layers=[1, 0], num_local_experts=3, num_experts_per_tok=1,
                                                   intermediate_size_mlp=64, interleave_moe_layer_step=1,
                                                   floor_scale=4, attn_implementation=attn))
    else:
        m = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                           bos_token_id=1, eos_token_id=2, attn_implementation=attn))
    return m.eval()


FORMS = [("mistral", "sdpa", [(True, 4, None)] * 2), ("mistral", "eager", [(True, 4, None)] * 2),
         ("qwen2-alternating", "sdpa", [(True, None, None), (True, 4, None)]),
         ("gemma2", "eager", [(True, 4, 5.0), (True, None, 5.0)]),
         ("llama", "eager", [(True, None, None)] * 2), ("gpt2", "eager", [(True, None, None)] * 2),
         ("gpt2", "sdpa", [(True, None, None)] * 2), ("gpt_neo", "eager", [(True, None, None), (True, 4, None)])]


def _fused(model: torch.nn.Module, ids: torch.Tensor) -> tuple:
    """The captured model after the default pipeline and fuse-attention, and the pass log."""
    cap = capture_export(model, (ids,), {"use_cache": False}, dynamic=True)
    ctx = PassContext()
    return PassManager(default_pipeline() + ["fuse-attention", "dead-code-elimination"]).run(cap.graph, ctx), ctx


def _generate_equals_recompute(model: torch.nn.Module) -> object:
    """Greedy generate (rows of 9 and 6 tokens, 8 new) equals eager recomputation; returns the compiled model."""
    model.generation_config.eos_token_id = None  # the oracle does not stop at EOS
    ids, mask = prompts(VOCAB, [9, 6])
    compiled = membound.compile(model)
    with torch.no_grad():
        out = membound.generate(compiled, ids, 8, attention_mask=mask)
        ref = recompute(model, ids, mask, 8)
    assert torch.equal(out[:, ids.shape[1]:], ref), (out[:, ids.shape[1]:], ref)
    return compiled


def _logits_then_cached(model: torch.nn.Module, ids: torch.Tensor, g: object) -> list:
    """The fused graph's logits equal eager's (fp32); greedy generate equals recomputation; returns the decode
    graph's cached attentions as (window, sinks)."""
    from membound.backends.reference import run_graph

    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
    torch.testing.assert_close(run_graph(g, [ids])[0], ref, rtol=1e-4, atol=1e-5)  # fp32
    compiled = _generate_equals_recompute(model)
    return [(n.attrs["window"], n.attrs["sinks"]) for n in compiled._kv_program.decode_graph.nodes
            if n.op == "cached_attention"]


@pytest.mark.parametrize("name, attn, want", FORMS, ids=[f"{n}-{a}" for n, a, _ in FORMS])
def test_hf_attention_ends_as_attention_ops_with_window_and_softcap(name, attn, want):
    model = _hf(name, attn)
    ids = torch.randint(3, VOCAB, (2, 7))
    g, ctx = _fused(model, ids)
    got = [(n.attrs["causal"], n.attrs["window"], n.attrs["softcap"]) for n in g.nodes if n.op == "attention"]
    assert got == want, "\n".join(ctx.log)
    assert g.count("softmax") == 0
    assert all(len(n.inputs) == 3 for n in g.nodes if n.op == "attention")  # the mask became attributes
    from membound.backends.reference import run_graph

    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
    torch.testing.assert_close(run_graph(g, [ids])[0], ref, rtol=1e-4, atol=1e-5)  # fp32


@pytest.mark.parametrize("name, attn", [("mistral", "sdpa"), ("qwen2-alternating", "sdpa"), ("gemma2", "eager"),
                                        ("gpt_neo", "eager")])
def test_window_shorter_than_prompt_generates_eager_greedy_tokens(name, attn):
    # window 4 < prompt 9 + 8 new tokens: before the fix the cached path dropped the window silently
    compiled = _generate_equals_recompute(_hf(name, attn))
    windows = [n.attrs["window"] for n in compiled._kv_program.prefill_graph.nodes if n.op == "cached_attention"]
    assert 4 in windows


def test_mask_that_cannot_be_proven_refuses_with_the_reason(monkeypatch):
    # a window past the largest size membound evaluates masks at: refused, never dropped
    import membound.passes.mask_form as mf

    monkeypatch.setattr(mf, "MAX_PROVABLE", 5)
    model = _hf("mistral", "sdpa", window=6)
    ids, _ = prompts(VOCAB, [9])
    with pytest.raises(KVCacheError, match="constant 6, past the largest size"):
        membound.generate(membound.compile(model), ids, 4)


def test_bloom_flattened_heads_with_alibi_fuse_and_decode_with_the_cache():
    """BLOOM scores all heads in one baddbmm over [B*H, S, D] (ALiBi added there), views them as [B, H, S, L] for the
    causal mask and the softmax, and multiplies by v over [B*H, ...] again. Before fuse-attention knew that form it
    stayed unfused and generate refused the KV cache ("no attention op"); now each layer is one causal attention with
    BLOOM's slopes 2^(-8 (h + 1) / H), cached_attention decodes it, and greedy tokens equal eager's recomputation."""
    model = _hf("bloom", "eager")
    g, ctx = _fused(model, torch.randint(3, VOCAB, (2, 7)))
    slopes = tuple(2.0 ** (-8.0 * (h + 1) / 4) for h in range(4))
    got = [(n.attrs["causal"], n.attrs["alibi"], len(n.inputs)) for n in g.nodes if n.op == "attention"]
    assert got == [(True, slopes, 3)] * 2, "\n".join(ctx.log)
    assert g.count("softmax") == 0
    compiled = _generate_equals_recompute(model)
    alibi = [n.attrs["alibi"] for n in compiled._kv_program.decode_graph.nodes if n.op == "cached_attention"]
    assert alibi == [slopes] * 2


def test_gpt_neo_in_half_precision_fuses_its_f32_scores():
    """GPT-Neo upcasts q and k to f32 for the scores (``q.to(f32) @ k.to(f32).T``) while v and the output stay
    half: fused onto the half q and k (the kernels accumulate the scores in f32 from the same half values), where
    before the mixed dtypes left it unfused and generate refused the KV cache. fp16 logits against eager fp16
    within 1e-2 of their scale (the sums' order differs)."""
    model = _hf("gpt_neo", "eager").to(torch.float16)
    ids = torch.randint(3, VOCAB, (2, 7))
    g, ctx = _fused(model, ids)
    got = [(n.attrs["causal"], n.attrs["window"], n.inputs[0].dtype) for n in g.nodes if n.op == "attention"]
    assert got == [(True, None, torch.float16), (True, 4, torch.float16)], "\n".join(ctx.log)
    from membound.backends.reference import run_graph

    with torch.no_grad():
        ref = model(ids, use_cache=False).logits.float()
    out = run_graph(g, [ids])[0].float()
    assert float((out - ref).abs().max()) <= 1e-2 * float(ref.abs().max())


def test_gpt_neo_half_precision_padded_mask_builds_in_range_constants():
    """With a padding mask GPT-Neo adds it after its boolean causal fill (``finfo(f32).min``); the fused form's
    additive mask is in fp16, so that fill becomes fp16's own min: a constant of f32's min in fp16 has no value
    (CUDA's ``torch.full`` refuses it, the first H200 run of the fuzzer found). Every constant the fused graph
    builds fits its dtype, and the logits at real tokens match eager fp16 within 1e-2 of their scale."""
    model = _hf("gpt_neo", "eager").to(torch.float16)
    ids, mask = prompts(VOCAB, [7, 4, 6])
    cap = capture_export(model, (ids,), {"attention_mask": mask, "use_cache": False}, dynamic=True)
    g = PassManager(default_pipeline() + ["fuse-attention", "dead-code-elimination"]).run(cap.graph, PassContext())
    assert sum(n.op == "attention" for n in g.nodes) == 2
    for n in g.nodes:
        if n.op in ("constant", "full") and n.result.dtype.is_floating_point:
            value = float(n.attrs["value"])
            assert not math.isfinite(value) or abs(value) <= torch.finfo(n.result.dtype).max, n
    from membound.backends.reference import run_graph

    with torch.no_grad():
        ref = model(ids, attention_mask=mask, use_cache=False).logits.float()
    out = run_graph(g, [ids, mask])[0].float()
    keep = mask.bool()
    assert float((out[keep] - ref[keep]).abs().max()) <= 1e-2 * float(ref[keep].abs().max())


def test_mpt_half_precision_alibi_keeps_its_exact_slopes():
    """MPT adds an f32 ALiBi table (sliced by ``max(0, max_seq_len - S)``) to its scores, then fills the mask. In
    fp16 fuse-attention casts that additive mask to q's dtype, whose rounding hid the slopes of a head count that is
    not a power of two (12 heads: ``2^(-8 k / 16)`` for odd k), so the KV cache was refused; the mask's form is now
    read before that cast. Each layer folds to a causal attention with MPT's own slopes (to f32 precision), and the
    fp16 logits at real tokens match eager within 1e-2 of their scale."""
    import transformers as T

    torch.manual_seed(0)
    model = T.MptForCausalLM(T.MptConfig(vocab_size=VOCAB, d_model=48, n_heads=12, n_layers=2, max_seq_len=32,
                                         expansion_ratio=2)).eval().to(torch.float16)
    ids = torch.randint(3, VOCAB, (2, 7))
    g, ctx = _fused(model, ids)
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    table = build_mpt_alibi_tensor(12, 32).float()  # [H, 1, L]: slope_h * (j - (L - 1))
    want = (table[:, 0, -1] - table[:, 0, -2]).tolist()

    def exact(slopes: object) -> bool:
        return slopes is not None and max(abs(a - b) for a, b in zip(slopes, want)) < 1e-6  # type: ignore[union-attr]

    got = [(n.attrs["causal"], exact(n.attrs["alibi"])) for n in g.nodes if n.op == "attention"]
    assert got == [(True, True)] * 2, "\n".join(ctx.log)
    from membound.backends.reference import run_graph

    with torch.no_grad():
        ref = model(ids, use_cache=False).logits.float()
    out = run_graph(g, [ids])[0].float()
    assert float((out - ref).abs().max()) <= 1e-2 * float(ref.abs().max())
    # with left padding, the decode step's cached attention carries the same slopes
    model.generation_config.eos_token_id = None
    compiled = membound.compile(model)
    pids, pmask = prompts(VOCAB, [7, 4, 6])
    membound.generate(compiled, pids, 3, attention_mask=pmask)
    alibi = [n.attrs["alibi"] for n in compiled._kv_program.decode_graph.nodes if n.op == "cached_attention"]
    assert len(alibi) == 2 and all(exact(a) for a in alibi), alibi


def test_gpt_oss_sinks_fuse_and_decode_with_the_cache():
    """gpt-oss joins each head's learned sink logit to the masked scores (``cat``), subtracts the row max, takes the
    softmax and drops the sink's column before the product with v. Before fuse-attention knew the form it stayed
    unfused and generate refused the KV cache ("no attention op"); now each layer is one causal attention with its
    sinks as an operand (``sinks=true``; the sliding layer's window an attribute), cached_attention carries them,
    and greedy tokens equal eager's recomputation with a window (4) shorter than the prompt (9)."""
    model = _hf("gpt_oss", "eager")
    ids = torch.randint(3, VOCAB, (2, 7))
    g, ctx = _fused(model, ids)
    got = [(n.attrs["causal"], n.attrs["window"], n.attrs["sinks"], n.inputs[-1].name) for n in g.nodes
           if n.op == "attention"]
    assert got == [(True, 4, True, "model.layers.0.self_attn.sinks"),
                   (True, None, True, "model.layers.1.self_attn.sinks")], "\n".join(ctx.log)
    assert g.count("softmax") == 0 and g.count("moe") == 2  # no attention's; the routers' inside the fused experts
    cached = _logits_then_cached(model, ids, g)
    assert cached == [(4, True), (None, True)]


@pytest.mark.parametrize("name, want", [
    ("granite_swa", [(True, 4, True), (True, None, True)]),
    ("mimo_v2_flash", [(True, None, False), (True, 4, True)]),
], ids=["granite-swa-sink-scale", "mimo-v2-flash-row-max"])
def test_sink_scale_and_row_max_forms_fuse_and_decode_with_the_cache(name, want):
    """Granite-SWA scales each head's output by ``sigmoid(logsumexp(s) - sink)``: the same as gpt-oss's sink column
    (``exp(s) @ v / (sum exp(s) + exp(sink))``), rewritten to it and fused with ``sinks=true``. MiMo-V2-Flash's full
    layers subtract the scores' row max before the softmax (a no-op under it). Every layer ends as one causal
    attention, no softmax or logsumexp reduction is left, logits equal eager's, and greedy tokens with the cache equal
    eager's recomputation with a window (4) shorter than the prompt (9)."""
    model = _hf(name, "eager")
    ids = torch.randint(3, VOCAB, (2, 7))
    g, ctx = _fused(model, ids)
    got = [(n.attrs["causal"], n.attrs["window"], n.attrs["sinks"]) for n in g.nodes if n.op == "attention"]
    assert got == want, "\n".join(ctx.log)
    assert g.count("amax") == 0 and g.count("log") == 0 and g.count("matmul") == 0, "\n".join(ctx.log)
    cached = _logits_then_cached(model, ids, g)
    assert cached == [(w, sk) for _, w, sk in want]


def test_a_sink_scale_over_other_scores_is_not_taken_for_sinks():
    """``softmax(s) @ v * sigmoid(logsumexp(2 s) - sink)`` is no sink column: the rewrite declines, says why, and the
    graph keeps eager's values."""
    class Attn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sinks = torch.nn.Parameter(torch.linspace(-1.0, 2.0, 4))

        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            s = q @ k.transpose(2, 3) * 0.3
            scale = (torch.logsumexp(s * 2, dim=-1) - self.sinks.view(1, -1, 1)).sigmoid()
            return (s.softmax(-1) @ v) * scale.unsqueeze(-1)

    from membound.backends.reference import run_graph

    m, xs = Attn(), [torch.randn(2, 4, 5, 8) for _ in range(3)]
    cap = capture_export(m, tuple(xs), {})
    ctx = PassContext()
    g = PassManager(["fuse-attention", "dead-code-elimination"]).run(cap.graph, ctx)
    assert all(not n.attrs.get("sinks") for n in g.nodes if n.op == "attention")
    assert any("its logsumexp is not over the softmax's scores" in line for line in ctx.log), ctx.log
    with torch.no_grad():
        torch.testing.assert_close(run_graph(g, xs)[0], m(*xs), rtol=1e-5, atol=1e-6)


def test_deepseek_sparse_attention_decodes_as_dense_while_its_top_k_keeps_every_key():
    """DeepSeek Sparse Attention (here GLM-MoE-DSA's; DeepSeek-V3.2 and HY-V4 spell it the same): an indexer's top
    ``min(index_topk, L)`` keys scattered into a mask. Up to ``index_topk`` (10) keys that keeps every key, so each
    layer is one causal attention (no indexer left) and greedy tokens with the cache equal eager's recomputation;
    a call past 10 positions is refused, naming the limit, and ``kv_cache=False`` (the sparse path) matches eager."""
    import transformers as T

    from membound.runtime.kv_cache import CacheCapacityError

    torch.manual_seed(0)
    config = T.GlmMoeDsaConfig(**{**_common(), "num_key_value_heads": 4}, kv_lora_rank=16, q_lora_rank=16,
                               qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, index_topk=10, index_head_dim=16,
                               index_n_heads=2, mlp_layer_types=["dense", "dense"])
    model = T.GlmMoeDsaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    ids = torch.randint(3, VOCAB, (2, 7))
    g, ctx = _fused(model, ids)
    assert [(n.attrs["causal"], len(n.inputs)) for n in g.nodes if n.op == "attention"] == [(True, 3)] * 2, ctx.log
    assert g.count("topk") == 0 and g.count("scatter") == 0
    ids, mask = prompts(VOCAB, [6, 4])
    compiled = membound.compile(model)
    with torch.no_grad():
        out = membound.generate(compiled, ids, 4, attention_mask=mask)
        assert torch.equal(out[:, ids.shape[1]:], recompute(model, ids, mask, 4))
        with pytest.raises(CacheCapacityError, match="at most 10 positions"):
            membound.generate(compiled, ids, 5, attention_mask=mask)
        out = membound.generate(compiled, ids, 5, attention_mask=mask, kv_cache=False)
        assert torch.equal(out[:, ids.shape[1]:], recompute(model, ids, mask, 5))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_llama4_chunked_attention_folds_to_chunk_and_decodes_with_the_cache(attn):
    """Llama 4's local layers see only their chunk of ``attention_chunk_size`` positions (``i // C == j // C``), its
    NoPE layers scale q by a temperature that grows with the position. Before, the chunked mask was no band and
    generate refused the cache, and the temperature (``[1, S, 1, 1]`` expanded to the batch) could not be made
    per-row. Now the chunked layer is ``attention {causal=true, chunk=4}``, the full one plain causal, and greedy
    tokens equal eager's recomputation with prompts (9, 6) and 8 new tokens crossing chunk edges."""
    model = _hf("llama4", attn)
    ids = torch.randint(3, VOCAB, (2, 7))
    g, ctx = _fused(model, ids)
    got = [(n.attrs["causal"], n.attrs["window"], n.attrs["chunk"]) for n in g.nodes if n.op == "attention"]
    assert got == [(True, None, 4), (True, None, None)], "\n".join(ctx.log)
    from membound.backends.reference import run_graph

    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
    torch.testing.assert_close(run_graph(g, [ids])[0], ref, rtol=1e-4, atol=1e-5)  # fp32
    compiled = _generate_equals_recompute(model)
    cached = [n.attrs["chunk"] for n in compiled._kv_program.decode_graph.nodes if n.op == "cached_attention"]
    assert cached == [4, None]


def test_llama4_real_chunk_size_is_proven():
    """Llama 4's chunks are 8192 positions: the mask is evaluated up to 8194 (MAX_PROVABLE), so the cache is not
    refused, and the decode graph carries chunk=8192 (a dropped chunk would be silently wrong past 8192 tokens)."""
    model = _hf("llama4", "sdpa", window=8192)
    model.generation_config.eos_token_id = None
    ids, mask = prompts(VOCAB, [5])
    compiled = membound.compile(model)
    with torch.no_grad():
        membound.generate(compiled, ids, 2, attention_mask=mask)
    cached = [n.attrs["chunk"] for n in compiled._kv_program.decode_graph.nodes if n.op == "cached_attention"]
    assert cached == [8192, None]
