"""Tiny Hugging Face models (random weights, built from configs) used by the end-to-end tests."""

from __future__ import annotations

import torch

VOCAB = 97


def _common() -> dict:
    return dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build_hf(name: str) -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(0)
    if name == "llama":
        m = T.LlamaForCausalLM(T.LlamaConfig(**_common()))
    elif name == "mistral":
        m = T.MistralForCausalLM(T.MistralConfig(**_common()))
    elif name == "qwen2":
        m = T.Qwen2ForCausalLM(T.Qwen2Config(**_common()))
    elif name == "mixtral":
        m = T.MixtralForCausalLM(T.MixtralConfig(**_common(), num_local_experts=4, num_experts_per_tok=2))
    elif name == "opt":  # learned positions counted from a mask of ones (cumsum), offset 2
        m = T.OPTForCausalLM(T.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                          num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32,
                                          bos_token_id=1, eos_token_id=2, pad_token_id=0))
    elif name == "gptj":  # rotary sin/cos rows gathered from a table at position_ids (index, not embedding)
        m = T.GPTJForCausalLM(T.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                                            n_positions=128, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    elif name.startswith("gpt2"):
        attn = name.split("-")[1]
        m = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                           bos_token_id=1, eos_token_id=2, attn_implementation=attn))
    else:
        raise ValueError(name)
    return m.eval()


HF_MODELS = ["llama", "mistral", "qwen2", "gpt2-eager", "gpt2-sdpa", "mixtral"]
