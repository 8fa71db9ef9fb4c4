"""Models that already carry a KV cache (in-place writes into their buffers) compile and decode.

The frontend turns ``index_copy_`` / ``buf[:, :, pos] = x`` / ``copy_`` on buffers into state ops
(``cache_write``, ``state_copy``); the buffers stay the model's own tensors, so the cache persists.
"""

import math

import pytest
import torch

import membound

from .hf_models import VOCAB, build_hf
from .test_generate import recompute


class GptFastStyle(torch.nn.Module):
    """A gpt-fast-style decoder: static k/v buffers written with slice assignment at input_pos."""

    def __init__(self, vocab=61, dim=32, heads=4, kv_heads=2, layers=2, max_len=48):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.emb = torch.nn.Embedding(vocab, dim)
        self.wqkv = torch.nn.ModuleList(torch.nn.Linear(dim, (heads + 2 * kv_heads) * self.hd, bias=False)
                                        for _ in range(layers))
        self.wo = torch.nn.ModuleList(torch.nn.Linear(dim, dim, bias=False) for _ in range(layers))
        self.pos = torch.nn.Embedding(max_len, dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        for i in range(layers):
            self.register_buffer(f"k{i}", torch.zeros(1, kv_heads, max_len, self.hd))
            self.register_buffer(f"v{i}", torch.zeros(1, kv_heads, max_len, self.hd))
        self.layers = layers

    def forward(self, idx, input_pos):
        B, S = idx.shape
        x = self.emb(idx) + self.pos(input_pos)[None]                           # [B, S, D]
        for i in range(self.layers):
            q, k, v = self.wqkv[i](x).split([self.heads * self.hd, self.kv_heads * self.hd,
                                              self.kv_heads * self.hd], dim=-1)
            q = q.view(B, S, self.heads, self.hd).transpose(1, 2)
            k = k.view(B, S, self.kv_heads, self.hd).transpose(1, 2)
            v = v.view(B, S, self.kv_heads, self.hd).transpose(1, 2)
            kc, vc = getattr(self, f"k{i}"), getattr(self, f"v{i}")
            kc[:, :, input_pos] = k                                             # the in-place cache write
            vc.index_copy_(2, input_pos, v)
            mask = torch.arange(kc.shape[2], device=idx.device)[None, :] <= input_pos[:, None]  # [S, T]
            a = torch.nn.functional.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=True,
                                                                 scale=1 / math.sqrt(self.hd))
            x = x + self.wo[i](a.transpose(1, 2).reshape(B, S, -1))
        return self.head(x)


def test_gpt_fast_style_cache_is_state_and_decodes_like_eager():
    torch.manual_seed(0)
    eager, ours = GptFastStyle().eval(), GptFastStyle().eval()
    ours.load_state_dict(eager.state_dict())
    compiled = membound.compile(ours)
    ids = torch.randint(0, 61, (1, 7))
    with torch.no_grad():
        a = eager(ids, torch.arange(7))
        b = compiled(ids, torch.arange(7))
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        assert {v.name for v in compiled.ir.state} == {"k0", "v0", "k1", "v1"}
        assert compiled.ir.count("cache_write") == 4
        assert compiled.ir.state[0].producer is None and compiled.ir.tensors["k0"] is ours.k0  # by reference
        tok = a[:, -1:].argmax(-1)
        for p in range(7, 11):                       # the cache written by earlier calls is read back
            a = eager(tok, torch.tensor([p]))
            b = compiled(tok, torch.tensor([p]))
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
            tok = a[:, -1:].argmax(-1)


def test_generate_on_gpt_fast_style_model():
    torch.manual_seed(1)
    eager, ours = GptFastStyle().eval(), GptFastStyle().eval()
    ours.load_state_dict(eager.state_dict())
    ids = torch.randint(0, 61, (1, 5))
    out = membound.generate(membound.compile(ours), ids, 12)
    # oracle: eager decoding of the same model, step by step with its own cache
    with torch.no_grad():
        logits = eager(ids, torch.arange(5))
        ref = []
        for p in range(5, 17):
            tok = logits[:, -1].argmax(-1, keepdim=True)
            ref.append(tok)
            logits = eager(tok, torch.tensor([p]))
    assert torch.equal(out[:, 5:], torch.cat(ref, 1)[:, :12])


def test_rows_of_different_lengths_are_refused_for_a_shared_position_cache():
    with pytest.raises(ValueError, match="same prompt length"):
        mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
        membound.generate(membound.compile(GptFastStyle().eval()), torch.randint(0, 61, (2, 3)), 2,
                          attention_mask=mask)


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2-sdpa"])
@pytest.mark.parametrize("batch", [1, 3])
def test_hf_static_cache_module_generates_like_full_recompute(name, batch):
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    model = build_hf(name)
    model.generation_config.cache_implementation = "static"
    wrapped = TorchExportableModuleForDecoderOnlyLM(model, batch_size=batch, max_cache_len=64).model
    ids = torch.randint(3, VOCAB, (batch, 9))
    compiled = membound.compile(wrapped)
    out = membound.generate(compiled, ids, 32)
    ref = recompute(model, ids, torch.ones_like(ids), 32)
    assert torch.equal(out[:, 9:], ref)
    assert compiled.ir.count("cache_write") == 2 * model.config.num_hidden_layers
