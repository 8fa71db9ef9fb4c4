"""Small reference models written plainly in torch (no KV cache), for the demo, tests and benches.

This package imports nothing else of membound: the models are ordinary ``nn.Module``s that the
compiler captures like any user model.

    from membound.models import build_model, list_models
    model = build_model("llama-tiny")          # random weights, eval mode
    logits = model(torch.randint(0, 256, (2, 7)))  # [B, S] -> [B, S, V]
"""

from membound.models.build import build_model, init_weights, model_from_config
from membound.models.configs import MODELS, ModelConfig, get_config, list_models
from membound.models.gpt2 import GPT2, GPT2Config
from membound.models.llama import Llama, LlamaConfig
from membound.models.mixtral import Mixtral, MixtralConfig

__all__ = [
    "GPT2",
    "GPT2Config",
    "Llama",
    "LlamaConfig",
    "MODELS",
    "Mixtral",
    "MixtralConfig",
    "ModelConfig",
    "build_model",
    "get_config",
    "init_weights",
    "list_models",
    "model_from_config",
]
