"""Hugging Face families whose rotary embedding is complex (DeepSeek-V2 here; Llama 4 alike: ``torch.polar``,
``view_as_complex``, ``view_as_real``; the IR has no complex dtype) are captured with the same arithmetic on real
tensors (``export._hf_rotary_without_complex``): the logits equal eager's (fp32, 1e-5), greedy generate with the KV
cache equals eager's recomputation, and the model's own functions are back in place after the capture."""

from __future__ import annotations

import sys

import pytest
import torch

import membound
from membound.frontends import capture_export
from membound.testing.model_fuzz import greedy_oracle

T = pytest.importorskip("transformers")


def _deepseek_v2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = T.DeepseekV2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                             n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1, kv_lora_rank=16,
                             q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                             moe_intermediate_size=32, eos_token_id=None, pad_token_id=0, bos_token_id=1)
    return T.DeepseekV2ForCausalLM(cfg).eval()


def test_deepseek_v2_captures_without_complex_tensors_and_decodes() -> None:
    model = _deepseek_v2()
    mod = sys.modules[type(model.model.rotary_emb).__module__]
    apply_before = mod.apply_rotary_emb
    ids = torch.randint(2, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    cap = capture_export(model, (ids,), {"use_cache": False}, dynamic=True)
    assert mod.apply_rotary_emb is apply_before and "forward" not in vars(model.model.rotary_emb)  # restored
    assert not any(n.op == "torch_call" for n in cap.graph.nodes)
    compiled = membound.compile(model, backend="reference")
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    out = membound.generate(compiled, ids, 5, attention_mask=mask)
    for row, (tokens, _) in enumerate(greedy_oracle(model, ids, mask, 5, hf=True)):
        assert out[row, ids.shape[1]:].tolist() == tokens
