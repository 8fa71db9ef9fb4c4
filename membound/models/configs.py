"""Named model configurations, all in one place.

``*-tiny`` presets are for tests (about 0.1M parameters, milliseconds on CPU); the others copy the shapes of real
checkpoints so benchmarks see real memory traffic: ``llama-1b`` is Llama-3.2-1B's shape (tied
embeddings; its llama3 rope-frequency scaling is not modelled), ``llama-8b`` is Llama-3-8B's,
``gpt2-small`` is GPT-2's 124M, ``mixtral-small`` is a scaled-down Mixtral (8 experts, top 2).
"""

from __future__ import annotations

from typing import Union

from membound.models.gpt2 import GPT2Config
from membound.models.llama import LlamaConfig
from membound.models.mixtral import MixtralConfig

ModelConfig = Union[LlamaConfig, GPT2Config, MixtralConfig]

MODELS: dict[str, ModelConfig] = {
    "llama-tiny": LlamaConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=176),
    "gpt2-tiny": GPT2Config(vocab_size=256, n_positions=128, dim=64, n_layers=2, n_heads=4),
    "mixtral-tiny": MixtralConfig(
        vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=96, n_experts=4, top_k=2
    ),
    "llama-1b": LlamaConfig(
        vocab_size=128256,
        dim=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        intermediate_size=8192,
        rope_theta=500000.0,
        tie_embeddings=True,
    ),
    "llama-8b": LlamaConfig(
        vocab_size=128256,
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        intermediate_size=14336,
        rope_theta=500000.0,
    ),
    "gpt2-small": GPT2Config(vocab_size=50257, n_positions=1024, dim=768, n_layers=12, n_heads=12),
    "mixtral-small": MixtralConfig(
        vocab_size=32000,
        dim=1024,
        n_layers=8,
        n_heads=16,
        n_kv_heads=4,
        intermediate_size=3584,
        n_experts=8,
        top_k=2,
        rope_theta=1e6,
    ),
}


def list_models() -> list[str]:
    """The names ``build_model`` accepts, in declaration order."""
    return list(MODELS)


def get_config(name: str) -> ModelConfig:
    """The config registered as ``name``; ValueError naming the known ones otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name]
