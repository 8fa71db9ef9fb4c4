"""Models small enough for whole-model runs under the Triton interpreter.

The interpreter runs a kernel's programs one after another in Python, and a decode GEMV gives each program
4 output columns (``kernels/linear.py``), so a model's cost there is about its widths and vocabulary summed:
``small_llama`` is membound's Llama at half llama-tiny's width with a 97-token vocabulary (the HF test models'),
with llama-tiny's structure (2 layers, GQA 2:1, gated MLP): ``generate`` through Triton takes under half llama-tiny's time.
"""

from __future__ import annotations

from torch import nn

from membound.models.build import init_weights, model_from_config
from membound.models.llama import LlamaConfig

VOCAB = 97


def small_llama(n_layers: int = 2) -> nn.Module:
    model = model_from_config(LlamaConfig(vocab_size=VOCAB, dim=32, n_layers=n_layers, n_heads=4, n_kv_heads=2,
                                          intermediate_size=44))
    init_weights(model, 0)
    return model.eval().requires_grad_(False)
