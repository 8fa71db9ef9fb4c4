"""``build_model``: a named model with deterministic random weights, ready for inference.

Weights cannot be downloaded here, so every model is random. The initialisation is chosen so that
numerical tests downstream can fail: every weight matrix is ``N(0, 1/fan_in)`` (about 0.02 at the
real sizes, larger at tiny sizes so attention scores and logits are O(1) rather than uniform), biases
are small and non-zero, and norm weights are ``1 + small noise`` (so a dropped bias or norm weight
changes the output).
"""

from __future__ import annotations

import torch
from torch import nn

from membound.models.configs import ModelConfig, get_config
from membound.models.gpt2 import GPT2, GPT2Config
from membound.models.llama import Llama, LlamaConfig
from membound.models.mixtral import Mixtral, MixtralConfig

SMALL_STD = 0.02


def model_from_config(config: ModelConfig) -> nn.Module:
    """An uninitialised model for ``config`` (its parameters are whatever the modules start with)."""
    if isinstance(config, LlamaConfig):
        return Llama(config)
    if isinstance(config, GPT2Config):
        return GPT2(config)
    if isinstance(config, MixtralConfig):
        return Mixtral(config)
    raise TypeError(f"model_from_config: no model class for config type {type(config).__name__}")


def build_model(
    name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0
) -> nn.Module:
    """Build the model registered as ``name`` with random weights from ``seed``, in eval mode, no grads.

    The module is built on the meta device and materialised directly in ``dtype`` on ``device``, so a
    large model never exists in float32 first. Weights are drawn in float32 by a generator on
    ``device`` and then cast, so the same seed gives the same weights for any dtype on one device.
    """
    config = get_config(name)
    with torch.device("meta"):
        model = model_from_config(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    if any(True for _ in model.buffers()):
        raise AssertionError(f"build_model({name!r}): models must not hold buffers (to_empty leaves them garbage)")
    init_weights(model, seed)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> None:
    """Fill every parameter deterministically (see the module docstring for the distributions)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.empty(param.shape, dtype=torch.float32, device=device).normal_(generator=generator)
        if param.ndim >= 2:  # [..., out, in] weight or [V, D] embedding: the last dim is the fan-in
            value = noise * param.shape[-1] ** -0.5
        elif name.endswith("bias"):
            value = noise * SMALL_STD
        else:  # a norm weight
            value = 1.0 + noise * SMALL_STD
        param.copy_(value)
