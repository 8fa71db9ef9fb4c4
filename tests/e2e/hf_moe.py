"""Tiny HF MoE models, and a switch that makes transformers take its CUDA MoE code path on the CPU.

``grouped_mm_experts_forward`` (transformers/integrations/moe.py) counts tokens per expert with
``torch.histc`` on *int32* expert ids on CUDA, on float ids on the CPU/MPS (``device.type in
("cpu", "mps")`` picks). ``cuda_moe_path()`` recompiles that function from transformers' own source
with the device test answered "not cpu", and lets torch's meta function of ``histc`` accept integer
CPU tensors (it rejects them only because CPU's kernel does), so ``torch.export`` records exactly the
CUDA graph: ``cast(ids, i32)``, ``histc`` on i32, ``cumsum`` to i32 offsets.
"""

from __future__ import annotations

import contextlib
import inspect
import textwrap
from typing import Any, Iterator

import pytest
import torch

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2)


def make_moe(name: str) -> Any:
    """A 2-layer ``MixtralForCausalLM`` or ``Qwen2MoeForCausalLM`` (shared expert) with random weights."""
    import transformers

    torch.manual_seed(0)
    if name == "mixtral":
        config = transformers.MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2)
        return transformers.MixtralForCausalLM(config).eval()
    config = transformers.Qwen2MoeConfig(**COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
                                         shared_expert_intermediate_size=40)
    model = transformers.Qwen2MoeForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises the router to zeros: every token would tie
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0, 0.5)
    return model


def set_experts_form(model: Any, impl: str = "grouped_mm", sentinels: bool = False) -> Any:
    """Run ``model``'s experts as ``impl`` (``grouped_mm`` or ``batched_mm``, the form HF's ``generate``
    decodes with off the CPU); ``sentinels`` masks expert-parallel sentinels as transformers 5.17 always
    does (``where(ids >= E, 0, x)``), by setting the flag later versions mask under."""
    model.set_experts_implementation(impl)
    for m in model.modules():
        if hasattr(m, "_is_expert_parallel"):
            m._is_expert_parallel = sentinels
    return model


DEVICE_TEST = 'device.type in ("cpu", "mps")'


@contextlib.contextmanager
def cuda_moe_path() -> Iterator[None]:
    import torch._meta_registrations as meta
    import transformers.integrations.moe as hf_moe

    original = hf_moe.grouped_mm_experts_forward
    source = textwrap.dedent(inspect.getsource(original))
    if DEVICE_TEST not in source:
        pytest.skip(f"this transformers' grouped_mm_experts_forward has no `{DEVICE_TEST}` test to force")
    namespace: dict[str, Any] = dict(vars(hf_moe))
    exec(compile(source.replace(DEVICE_TEST, "False"), inspect.getsourcefile(original) or "moe.py", "exec"),
         namespace)
    forced = namespace[original.__name__]
    mapping = hf_moe.ALL_EXPERTS_FUNCTIONS._global_mapping
    device_hint = meta.device_hint

    def int_histc_is_cuda(t: Any) -> str:
        return "cuda" if not t.is_floating_point() else device_hint(t)

    mapping["grouped_mm"], meta.device_hint = forced, int_histc_is_cuda
    try:
        yield
    finally:
        mapping["grouped_mm"], meta.device_hint = original, device_hint




def tiny_deepseek_v3(device: str = "cpu", experts: float = 0.0) -> Any:
    """A 2-layer HF ``DeepseekV3ForCausalLM`` (a dense first layer, then experts routed as V3 routes: sigmoid scores
    plus a correction bias, top groups, top-k), vocabulary 61, random weights; its router and correction bias drawn
    (HF initialises both to zeros: every score would tie), and its experts too when ``experts`` (their std)."""
    import transformers as T

    cfg = T.DeepseekV3Config(vocab_size=61, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8,
                             num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
                             kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                             max_position_embeddings=64)
    torch.manual_seed(0)
    model = T.DeepseekV3ForCausalLM(cfg).eval().to(device)
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.mlp.gate.weight.normal_(0, 0.5)
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.1)
            if experts:
                layer.mlp.experts.gate_up_proj.normal_(0, experts)
                layer.mlp.experts.down_proj.normal_(0, experts)
    return model


def triton_decode_ops(model: Any, ids: torch.Tensor, kernel: str, new_tokens: int = 4) -> list[str]:
    """``model`` compiled for the triton backend, generating ``new_tokens`` after ``ids``: the library kernel
    ``kernel`` ran, no op of the decode step reads device values on the host (a CUDA graph may hold it), and the
    greedy tokens equal HF's; returns the decode graph's ops."""
    import membound
    from membound.api import host_syncing_ops
    from membound.backends.triton.kernels import trace

    compiled = membound.compile(model, backend="triton")
    with trace() as calls:
        out = membound.generate(compiled, ids, new_tokens)
    assert (kernel, "kernel") in calls, sorted(set(calls))
    program = compiled._kv_program
    assert host_syncing_ops(program.decode) == []
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    assert torch.equal(out, want)
    return [n.op for n in program.decode_graph.nodes]
