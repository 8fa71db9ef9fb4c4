"""Which Hugging Face causal-LM families compile and decode right? A sweep of tiny random-weight configs.

    PYTHONPATH=. python benches/hf_families.py --out DIR                     # CPU, ~5 minutes: every family, both
                                                                             # backends (triton in the interpreter)
    PYTHONPATH=. python benches/hf_families.py --families bloom opt --backends reference
    PYTHONPATH=. python benches/hf_families.py --smoke --out DIR             # CPU: two families, reference (CI)
    PYTHONPATH=. python benches/hf_families.py --device cuda --families ...  # a GPU: compiled kernels (gpu/families.sh
                                                                             # runs the families in parallel there)

For each family in ``FAMILIES`` (the ``transformers`` class and config, at a tiny shape: hidden 64, 2 layers,
4 heads of 16 (2 kv heads where the family has GQA), vocab 97, fp32, seeded random weights) and each backend:
``membound.compile`` then ``membound.generate`` greedy, 6 new tokens, on a left-padded batch of three rows (7, 4
and 6 prompt tokens), against eager greedy decoding of each row alone by full recomputation (the oracle does not
depend on HF's cache or padding handling). A row is ``ok`` when every token equals the oracle's (on a GPU: while
the oracle's top-2 logit margin is at least 1e-3, as the model fuzzer compares); any exception is recorded with its
type and first line (a family membound refuses says why). Each row also records the decode graph's counts of
``DECODE_OPS`` (which attention form, one-launch blocks and MoE form the family's decode step ended with). Not a
speed bench: correctness of capture, fusion and the KV-cache rewrite on real model code. Writes
``results/hf_families-<device>-<date>-transformers<version>.json`` (a run over some families: ``-some``) and a copy
under ``--out``; the table last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, eos_token_id=None, pad_token_id=0, bos_token_id=1)
MOE = dict(num_experts=4, num_experts_per_tok=2)
# multi-head latent attention at the tiny shape (DeepSeek-V2/V3, GLM-4.7-Flash, LongCat-Flash)
MLA = dict(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
           v_head_dim=16)
# name -> (model class, config class, config keywords over COMMON)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", {}),
    "llama-rope-llama3": ("LlamaForCausalLM", "LlamaConfig", dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})),
    "llama-rope-yarn": ("LlamaForCausalLM", "LlamaConfig", dict(rope_scaling={
        "rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64})),
    "mistral-window": ("MistralForCausalLM", "MistralConfig", dict(sliding_window=3)),
    "qwen2-window": ("Qwen2ForCausalLM", "Qwen2Config", dict(use_sliding_window=True, sliding_window=3,
                                                             max_window_layers=1)),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(head_dim=16)),
    "qwen2-moe": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig", dict(MOE, moe_intermediate_size=32,
                                                               shared_expert_intermediate_size=48)),
    "qwen3-moe": ("Qwen3MoeForCausalLM", "Qwen3MoeConfig", dict(MOE, moe_intermediate_size=32, head_dim=16)),
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
    "olmoe": ("OlmoeForCausalLM", "OlmoeConfig", MOE),
    "granite-moe": ("GraniteMoeForCausalLM", "GraniteMoeConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
    # DeepSeek-V2: multi-head latent attention, a complex rotary embedding (polar, view_as_complex), experts
    "deepseek-v2": ("DeepseekV2ForCausalLM", "DeepseekV2Config", dict(
        MLA, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1, moe_intermediate_size=32)),
    # multi-head latent attention (kv heads = heads), group-limited routing with a score correction bias, a dense
    # first layer then experts with a shared one
    "deepseek-v3": ("DeepseekV3ForCausalLM", "DeepseekV3Config", dict(
        MLA, n_routed_experts=8, num_experts_per_tok=2, first_k_dense_replace=1, n_group=2, topk_group=1,
        moe_intermediate_size=32)),
    # attention sinks, a sliding (3) then a full layer, q/k/v and o biases, experts with biases and a clamped SwiGLU
    "gpt-oss": ("GptOssForCausalLM", "GptOssConfig", dict(num_local_experts=4, num_experts_per_tok=2, head_dim=16,
                                                          sliding_window=3,
                                                          layer_types=["sliding_attention", "full_attention"])),
    # chunked attention (chunks of 4 < prompt + new tokens) with RoPE, then a full NoPE layer with the position's
    # attention temperature; q/k L2 norms; experts (top 1, a shared expert, sigmoid router weights on the input)
    "llama4": ("Llama4ForCausalLM", "Llama4TextConfig", dict(
        head_dim=16, attention_chunk_size=4, no_rope_layers=[1, 0], num_local_experts=4, num_experts_per_tok=1,
        intermediate_size_mlp=96, interleave_moe_layer_step=1, floor_scale=4)),
    # session 21: MoE families whose routers moe does not name (GLM-4.5's, EXAONE's and dots.llm1's DeepSeek-V3-style
    # group-limited sigmoid routing, ERNIE 4.5's, MiniMax-M2's): their experts run as moe_experts over the graph's
    # routing
    "glm4-moe": ("Glm4MoeForCausalLM", "Glm4MoeConfig", dict(
        n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, moe_intermediate_size=32,
        first_k_dense_replace=1, head_dim=16)),
    "ernie4.5-moe": ("Ernie4_5_MoeForCausalLM", "Ernie4_5_MoeConfig", dict(moe_num_experts=4, moe_k=2,
                                                                           moe_intermediate_size=32, head_dim=16)),
    "minimax-m2": ("MiniMaxM2ForCausalLM", "MiniMaxM2Config", dict(num_local_experts=4, num_experts_per_tok=2,
                                                                   head_dim=16)),
    "exaone-moe": ("ExaoneMoeForCausalLM", "ExaoneMoeConfig", dict(num_experts=4, num_experts_per_tok=2,
                                                                   moe_intermediate_size=32, head_dim=16)),
    "dots1": ("Dots1ForCausalLM", "Dots1Config", dict(
        n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, moe_intermediate_size=32,
        first_k_dense_replace=1, head_dim=16, n_shared_experts=1)),
    # session 22: multi-head latent attention with moe_experts: GLM-4.7-Flash (GLM-4.5's routing, a dense first
    # layer) and LongCat-Flash (a softmax router over real and zero experts, the zero experts passing the input
    # through; one layer of two attention blocks and a dense MLP beside the experts)
    "glm4-moe-lite": ("Glm4MoeLiteForCausalLM", "Glm4MoeLiteConfig", dict(
        MLA, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, mlp_layer_types=["dense", "sparse"])),
    "longcat-flash": ("LongcatFlashForCausalLM", "LongcatFlashConfig", dict(
        MLA, head_dim=8, n_routed_experts=4, moe_topk=2, zero_expert_num=2, expert_ffn_hidden_size=32,
        ffn_hidden_size=96, num_layers=1)),
    # session 23: MiMo-V2-Flash: full-attention layers that subtract the scores' row max before the softmax, sliding
    # (3) ones with attention sinks (gpt-oss's form), v heads narrower than q/k's, a dense first layer then experts
    "mimo-v2-flash": ("MiMoV2FlashForCausalLM", "MiMoV2FlashConfig", dict(
        head_dim=16, v_head_dim=8, sliding_window=3, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, layer_types=["full_attention", "sliding_attention"],
        mlp_layer_types=["dense", "sparse"])),
    # Granite-SWA (dense and MoE): a sliding (3) then a full layer, each head's sink applied as the output's scale
    # sigmoid(logsumexp(scores) - sink), rewritten to gpt-oss's sink column
    "granite-swa": ("GraniteSWAForCausalLM", "GraniteSWAConfig", dict(
        head_dim=16, sliding_window=3, attention_multiplier=0.25, layer_types=["sliding_attention", "full_attention"])),
    "granite-moe-swa": ("GraniteMoeSWAForCausalLM", "GraniteMoeSWAConfig", dict(
        head_dim=16, sliding_window=3, attention_multiplier=0.25, num_local_experts=4, num_experts_per_tok=2,
        layer_types=["sliding_attention", "full_attention"])),
    # DeepSeek Sparse Attention (an indexer's top min(index_topk, L) keys scattered into the mask): dense while the
    # top-k keeps every key (L <= index_topk, the capture's range; generate decodes with the cache no further)
    "deepseek-v3.2": ("DeepseekV32ForCausalLM", "DeepseekV32Config", dict(
        MLA, n_routed_experts=8, num_experts_per_tok=2, first_k_dense_replace=1, n_group=2, topk_group=1,
        moe_intermediate_size=32, index_topk=16, index_head_dim=16, index_n_heads=2)),
    "glm-moe-dsa": ("GlmMoeDsaForCausalLM", "GlmMoeDsaConfig", dict(
        MLA, n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, moe_intermediate_size=32,
        mlp_layer_types=["dense", "sparse"], index_topk=16, index_head_dim=16, index_n_heads=2)),
    # HY-V4: DeepSeek Sparse Attention as above, hyper-connections, experts with a clamped silu (silu(min(g, L)) *
    # clamp(u, -L, L)) over the graph's sigmoid routing
    "hy-v4": ("HYV4ForCausalLM", "HYV4Config", dict(
        head_dim=16, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, swiglu_limit=0.5,
        mlp_layer_types=["dense", "sparse"], index_topk=16)),
    # ... and ones it does (softmax top-k routers, a shared expert or none), and PhiMoE's sparsemixer routing (two
    # max indices, no topk: moe_experts over the ids the experts are sorted by)
    "hunyuan-moe": ("HunYuanMoEV1ForCausalLM", "HunYuanMoEV1Config", dict(num_experts=4, moe_topk=2, head_dim=16)),
    "flex-olmo": ("FlexOlmoForCausalLM", "FlexOlmoConfig", dict(num_experts=4, num_experts_per_tok=2)),
    "granite-moe-shared": ("GraniteMoeSharedForCausalLM", "GraniteMoeSharedConfig", dict(
        num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=32)),
    "cohere2-moe": ("Cohere2MoeForCausalLM", "Cohere2MoeConfig", dict(num_experts=4, num_experts_per_tok=2)),
    "phimoe": ("PhimoeForCausalLM", "PhimoeConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", dict(head_dim=16)),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(head_dim=16, sliding_window=3)),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", dict(head_dim=16, sliding_window=4)),
    # Gemma 3n (text): AltUp, LAuReL, per-layer inputs, the first layer's activation sparsity (a Gaussian top-k
    # whose quantile comes from tensor literals, evaluated at capture), the last two layers reading the first two's
    # K/V (KV sharing)
    "gemma3n": ("Gemma3nForCausalLM", "Gemma3nTextConfig", dict(
        head_dim=16, num_hidden_layers=4, num_kv_shared_layers=2, sliding_window=4, laurel_rank=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        hidden_size_per_layer_input=8, vocab_size_per_layer_input=97, altup_num_inputs=2, intermediate_size=[96] * 4,
        activation_sparsity_pattern=[0.95, 0.0, 0.0, 0.0])),
    "phi": ("PhiForCausalLM", "PhiConfig", {}),
    "phi3-window": ("Phi3ForCausalLM", "Phi3Config", dict(sliding_window=3)),
    "olmo": ("OlmoForCausalLM", "OlmoConfig", {}),
    "olmo2": ("Olmo2ForCausalLM", "Olmo2Config", {}),
    "stablelm": ("StableLmForCausalLM", "StableLmConfig", {}),
    "gpt-neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", {}),
    "starcoder2": ("Starcoder2ForCausalLM", "Starcoder2Config", {}),
    "granite": ("GraniteForCausalLM", "GraniteConfig", {}),
    "cohere": ("CohereForCausalLM", "CohereConfig", {}),
    "glm": ("GlmForCausalLM", "GlmConfig", dict(head_dim=16)),
    "helium": ("HeliumForCausalLM", "HeliumConfig", dict(head_dim=16)),
    "smollm3": ("SmolLM3ForCausalLM", "SmolLM3Config", {}),
    "apertus": ("ApertusForCausalLM", "ApertusConfig", dict(head_dim=16)),  # xIELU (softplus, expm1), q/k norms
    "exaone4": ("Exaone4ForCausalLM", "Exaone4Config", {}),
    "nemotron": ("NemotronForCausalLM", "NemotronConfig", dict(head_dim=16)),
    "persimmon": ("PersimmonForCausalLM", "PersimmonConfig", {}),
    "falcon": ("FalconForCausalLM", "FalconConfig", dict(new_decoder_architecture=True, num_kv_heads=2)),
    "falcon-alibi": ("FalconForCausalLM", "FalconConfig", dict(alibi=True, multi_query=True)),
    "bloom": ("BloomForCausalLM", "BloomConfig", dict(n_layer=2, n_head=4)),
    "opt": ("OPTForCausalLM", "OPTConfig", dict(ffn_dim=96, word_embed_proj_dim=64)),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)),
    "gpt-bigcode": ("GPTBigCodeForCausalLM", "GPTBigCodeConfig", dict(n_embd=64, n_layer=2, n_head=4,
                                                                       n_positions=128)),
    "gptj": ("GPTJForCausalLM", "GPTJConfig", dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128)),
    "gpt-neo": ("GPTNeoForCausalLM", "GPTNeoConfig", dict(num_layers=2, num_heads=4, window_size=3,
                                                         attention_types=[[["global", "local"], 1]])),
    "codegen": ("CodeGenForCausalLM", "CodeGenConfig", dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                                                           n_positions=128, n_ctx=128)),
    "biogpt": ("BioGptForCausalLM", "BioGptConfig", {}),
    # XGLM: flattened heads, the softmax over their [B*H, S, L] view after a floor; MPT: an ALiBi table sliced to
    # min(S, max_seq_len) keys (the capture takes S <= max_seq_len), then a boolean fill (both decode since session 16)
    # known to stop with a clear error (the reason is recorded): a convolution (state-space models)
    "mpt": ("MptForCausalLM", "MptConfig", dict(d_model=64, n_heads=4, n_layers=2, max_seq_len=128,
                                                expansion_ratio=2)),
    "xglm": ("XGLMForCausalLM", "XGLMConfig", dict(d_model=64, num_layers=2, attention_heads=4, ffn_dim=96)),
    "mamba": ("MambaForCausalLM", "MambaConfig", dict(state_size=4, expand=2, conv_kernel=3)),
    "falcon-mamba": ("FalconMambaForCausalLM", "FalconMambaConfig", dict(state_size=4, expand=2, conv_kernel=3)),
    # attention, Mamba layers (their scan and short convolution carried in the cache) and experts in one stack
    "jamba": ("JambaForCausalLM", "JambaConfig", dict(
        num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
        num_experts=4, num_experts_per_tok=2, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2, mamba_dt_rank=8,
        use_mamba_kernels=False)),
    # Mamba layers, two of them after a shared attention block (its input the hidden state joined with the embeddings)
    "zamba": ("ZambaForCausalLM", "ZambaConfig", dict(
        num_hidden_layers=5, attn_layer_period=2, attn_layer_offset=1, attention_hidden_size=128, attention_head_dim=32,
        n_mamba_heads=2, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2, mamba_dt_rank=8, use_mamba_kernels=False)),
    # Mamba-2: heads of a scalar decay each, B and C shared by groups of heads; HF's chunked (SSD) scan taken as its
    # recurrence, carried in the cache with the short convolution's window (session 25)
    "mamba2": ("Mamba2ForCausalLM", "Mamba2Config", dict(
        num_heads=8, head_dim=16, n_groups=2, state_size=4, expand=2, conv_kernel=3, chunk_size=4)),
    # Mamba-2 layers in hybrids: Bamba (attention every other layer), NemotronH (Mamba-2, attention, experts and
    # MLP layers), Falcon-H1 (attention and Mamba-2 side by side in every layer, muP multipliers),
    # GraniteMoeHybrid (Mamba-2 or attention, then experts), Zamba2 (Mamba-2 layers, a shared attention block)
    "bamba": ("BambaForCausalLM", "BambaConfig", dict(
        attn_layer_indices=[1], mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=4, mamba_d_conv=3,
        mamba_expand=2, mamba_chunk_size=4)),
    "nemotron-h": ("NemotronHForCausalLM", "NemotronHConfig", dict(
        layers_block_type=["linear_attention", "full_attention", "moe", "mlp"], head_dim=16, mamba_num_heads=8,
        mamba_head_dim=16, n_groups=2, ssm_state_size=4, conv_kernel=3, chunk_size=4, n_routed_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=32,
        use_mamba_kernels=False)),
    "falcon-h1": ("FalconH1ForCausalLM", "FalconH1Config", dict(
        head_dim=16, mamba_d_ssm=128, mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=4,
        mamba_d_conv=3, mamba_chunk_size=4)),
    "granite-moe-hybrid": ("GraniteMoeHybridForCausalLM", "GraniteMoeHybridConfig", dict(
        layer_types=["mamba", "attention"], num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=32,
        mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=4, mamba_d_conv=3, mamba_chunk_size=4)),
    "zamba2": ("Zamba2ForCausalLM", "Zamba2Config", dict(
        num_hidden_layers=4, layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], attention_hidden_size=128,
        attention_head_dim=32, n_mamba_heads=8, mamba_headdim=16, mamba_ngroups=2, mamba_d_state=4, mamba_d_conv=3,
        mamba_expand=2, chunk_size=4, use_mamba_kernels=False)),
    # gated DeltaNet layers (a matrix state per head, HF's chunked delta rule taken as its recurrence, linear_attention,
    # carried in the cache with the short convolution's window; session 25) beside gated full attention: Qwen3-Next
    # and Qwen3.5-MoE (experts with a gated shared expert), Qwen3.5 (dense), OLMo-Hybrid
    "qwen3-next": ("Qwen3NextForCausalLM", "Qwen3NextConfig", dict(
        MOE, head_dim=16, layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=3,
        linear_key_head_dim=8, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        moe_intermediate_size=32, shared_expert_intermediate_size=32)),
    "qwen3.5": ("Qwen3_5ForCausalLM", "Qwen3_5TextConfig", dict(
        head_dim=16, layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=3,
        linear_key_head_dim=8, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4)),
    "qwen3.5-moe": ("Qwen3_5MoeForCausalLM", "Qwen3_5MoeTextConfig", dict(
        MOE, head_dim=16, layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=3,
        linear_key_head_dim=8, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        moe_intermediate_size=32, shared_expert_intermediate_size=32)),
    "olmo-hybrid": ("OlmoHybridForCausalLM", "OlmoHybridConfig", dict(
        layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=3, linear_key_head_dim=8,
        linear_value_head_dim=16, linear_num_key_heads=4, linear_num_value_heads=4)),
    # Kimi delta attention (a decay per key channel, linear_attention with a [.., K] decay) beside latent attention:
    # Kimi Linear (experts after a dense first layer), Bailing-hybrid (grouped routing)
    "kimi-linear": ("KimiLinearForCausalLM", "KimiLinearConfig", dict(
        **MLA, **MOE, layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "sparse"],
        head_dim=16, linear_head_dim=8, linear_num_heads=4, linear_conv_kernel_dim=3, moe_intermediate_size=32,
        num_experts_per_token=2, qk_head_dim=16)),
    "bailing-hybrid": ("BailingHybridForCausalLM", "BailingHybridConfig", dict(
        **MLA, **MOE, layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "sparse"],
        head_dim=16, linear_head_dim=8, linear_num_heads=4, linear_conv_kernel_dim=3, moe_intermediate_size=32,
        num_experts_per_token=2, qk_head_dim=16, num_expert_group=2, topk_group=1, first_k_dense_replace=1,
        expert_swiglu_limit_list=[0, 0], share_expert_swiglu_limit_list=[0, 0], num_nextn_predict_layers=0)),
    # RecurrentGemma (Griffin): RG-LRU recurrent blocks (HF's loop as one linear_scan, reset at a row's position 0)
    # beside local attention
    "recurrent-gemma": ("RecurrentGemmaForCausalLM", "RecurrentGemmaConfig", dict(
        num_hidden_layers=2, block_types=["recurrent", "attention"], lru_width=64, conv1d_width=3,
        attention_window_size=16, head_dim=16, num_key_value_heads=1)),
    # MiniMax-Text-01: lightning attention (linear attention with a decay per head, HF's loop over blocks taken as one
    # linear_attention) and softmax attention layers, Mixtral-style experts
    "minimax": ("MiniMaxForCausalLM", "MiniMaxConfig", dict(
        MOE, head_dim=16, layer_types=["linear_attention", "full_attention"], block_size=4)),
    # LFM2: captures (its short convolutions translate as their taps), but a convolution over the tokens needs a
    # state the KV cache does not hold: generate refuses the cache, naming the convolution's shift (session 23)
    "lfm2": ("Lfm2ForCausalLM", "Lfm2Config", dict(head_dim=16, layer_types=["conv", "full_attention"])),
    # LFM2's short convolutions and attention, experts after a dense first layer (a sigmoid router with a bias)
    "lfm2-moe": ("Lfm2MoeForCausalLM", "Lfm2MoeConfig", dict(
        MOE, moe_intermediate_size=32, num_dense_layers=1, use_expert_bias=True,
        layer_types=["conv", "full_attention"])),
    # LFM3: short convolutions, sliding-window (3) attention with an output gate, sandwich norms
    "lfm3": ("Lfm3ForCausalLM", "Lfm3Config", dict(head_dim=16, sliding_window=3, use_sandwich_norm=True,
                                                   use_attention_gate=True,
                                                   layer_types=["conv", "sliding_attention"])),
}
SMOKE = ("llama", "opt")
LENGTHS = (7, 4, 6)
NEW_TOKENS = 6


def build(name: str) -> Any:
    import torch
    import transformers as T

    model_cls, config_cls, extra = FAMILIES[name]
    torch.manual_seed(0)
    return getattr(T, model_cls)(getattr(T, config_cls)(**{**COMMON, **extra})).eval()


# the decode graph's ops a row records: which fusions fired for the family (attention forms, the one-launch
# blocks, MoE as one op or as grouped products), and what stayed outside the kernels (opaque torch calls)
DECODE_OPS = ("cached_attention", "attention_block", "mlp_block", "moe", "moe_experts", "grouped_mm", "linear_glu",
              "linear_rope", "torch_call")


def decode_ops(compiled: Any) -> dict[str, int]:
    """Counts of ``DECODE_OPS`` in the decode graph ``generate`` built (``{}`` when there is none)."""
    program = getattr(compiled, "_kv_program", None)
    graph = getattr(program, "decode_graph", None)
    if graph is None:
        return {}
    ops = [n.op for n in graph.nodes]
    return {op: ops.count(op) for op in DECODE_OPS if op in ops}


def check(name: str, backend: str, device: str = "cpu") -> dict[str, Any]:
    import torch

    import membound
    from membound.testing.model_fuzz import MARGIN, compare_greedy, greedy_oracle

    start = time.perf_counter()
    row: dict[str, Any] = {"family": name, "backend": backend, "class": FAMILIES[name][0]}
    import transformers

    if not hasattr(transformers, FAMILIES[name][0]):  # a family newer than the installed release: not a failure
        row.update(status="absent", error=f"transformers {transformers.__version__} has no {FAMILIES[name][0]}",
                   seconds=0.0)
        return row
    try:
        model = build(name).to(device)
        gen = torch.Generator().manual_seed(2)
        rows = [torch.randint(2, VOCAB, (n,), generator=gen) for n in LENGTHS]
        width = max(LENGTHS)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):  # left padding
            ids[i, width - len(r):] = r
            mask[i, width - len(r):] = 1
        ids, mask = ids.to(device), mask.to(device)
        compiled = membound.compile(model, backend=backend)
        with torch.no_grad():
            out = membound.generate(compiled, ids, NEW_TOKENS, attention_mask=mask)
        row["decode_ops"] = decode_ops(compiled)
        # the oracle: each row alone (its padding dropped), the whole sequence recomputed for every token
        oracle = greedy_oracle(model, ids, mask, NEW_TOKENS, hf=True)
        if device == "cpu":  # the same kernels' arithmetic on one machine: every token equal
            ok = [out[i, width:].tolist() == tokens for i, (tokens, _) in enumerate(oracle)]
            row.update(status="ok" if all(ok) else "wrong tokens", rows_ok=sum(ok), rows=len(ok))
        else:  # GPU kernels sum in another order than eager's: compared while eager's top-2 margin is clear
            compared, skipped, wrong = compare_greedy(oracle, out[:, width:].tolist(), MARGIN[torch.float32], backend)
            row.update(status="wrong tokens" if wrong else "ok", tokens_compared=compared,
                       tokens_skipped_near_ties=skipped, mismatches=wrong)
    except Exception as exc:  # noqa: BLE001 (recorded, the sweep goes on)
        row.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                   traceback=traceback.format_exc()[-2000:])
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="*", default=None, help=f"default: all ({len(FAMILIES)})")
    ap.add_argument("--backends", nargs="*", default=["reference", "triton"])
    ap.add_argument("--smoke", action="store_true", help=f"CPU: {', '.join(SMOKE)} on the reference backend")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: the triton backend runs its kernels compiled (fp32 models; greedy tokens compared "
                         "while eager's top-2 margin is at least 1e-3)")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    if "triton" in args.backends and not args.smoke and args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU tensors: the kernels in the interpreter
    names = list(SMOKE) if args.smoke else (args.families or list(FAMILIES))
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    backends = ["reference"] if args.smoke else args.backends
    import torch
    import transformers

    rows = []
    for name in names:
        for backend in backends:
            rows.append(check(name, backend, args.device))
            r = rows[-1]
            print(f"{name:18s} {backend:9s} {r['status']:12s} {r.get('error', '')[:150]}", flush=True)
    date = datetime.date.today().isoformat()
    device = args.device if args.device == "cpu" else torch.cuda.get_device_name().lower().replace(" ", "-")
    pipeline = os.environ.get("MEMBOUND_DECODE_PIPELINE", "decode")
    record = {"bench": "hf_families", "device": device, "date": date, "smoke": args.smoke,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": sys.version.split()[0]}, "decode_pipeline": pipeline,
              "method": __doc__.split("\n\n")[2], "rows": rows}
    # the transformers version names the file (model code changes between releases: GPT-J, Falcon and CodeGen spell
    # their attention differently in 5.17 and 5.25); a run over some families, or with another decode pipeline
    # (MEMBOUND_DECODE_PIPELINE), does not replace the default full run's file
    part = "-smoke" if args.smoke else ("-some" if args.families else "")
    part += "" if pipeline == "decode" else f"-{pipeline}"
    fname = f"hf_families-{device}-{date}-transformers{transformers.__version__}{part}.json"
    targets = [] if args.smoke else [ROOT / "benches" / "results" / fname]
    if args.out:
        targets.append(Path(args.out) / fname)
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
        t.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\n{'family':18s} " + " ".join(f"{b:12s}" for b in backends))
    for name in names:
        cells = [next(r["status"] for r in rows if r["family"] == name and r["backend"] == b) for b in backends]
        print(f"{name:18s} " + " ".join(f"{c:12s}" for c in cells))
    ok = sum(r["status"] == "ok" for r in rows)
    absent = sum(r["status"] == "absent" for r in rows)
    print(f"{ok}/{len(rows) - absent} ok (transformers {transformers.__version__})"
          + (f"; {absent} absent from this release" if absent else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
