"""Recurrent state beside the KV cache, on both backends: Mamba (its selective scan as one ``linear_scan``, its short
convolution as a ring of inputs), FalconMamba and Jamba (attention + Mamba + experts) decode eager's greedy tokens
(the whole sequence recomputed per token, per row without its padding) on right-padded rows of different lengths,
one of a single token; the states are one per row whatever the length. Also: membound's selective scan equals
Hugging Face's reference loop."""

from __future__ import annotations

import pytest
import torch
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

import membound
from membound.testing.model_fuzz import greedy_oracle

INTERP = Interpreted(__file__)
VOCAB = 97
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _model(name: str) -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(0)
    # untied, wider weights: the tiny random model's tokens depend on the mixers (tied, its greedy token repeated the
    # input's, whatever the state)
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, bos_token_id=1, eos_token_id=None,
                  pad_token_id=0, tie_word_embeddings=False, initializer_range=0.3)
    if name == "mamba":
        m = T.MambaForCausalLM(T.MambaConfig(**common, state_size=4, expand=2, conv_kernel=3))
    elif name == "falcon-mamba":
        m = T.FalconMambaForCausalLM(T.FalconMambaConfig(**common, state_size=4, expand=2, conv_kernel=4))
    else:  # layers: mamba, attention + experts
        m = T.JambaForCausalLM(T.JambaConfig(**common, intermediate_size=48, num_attention_heads=4,
                                             num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1,
                                             expert_layer_period=2, expert_layer_offset=1, num_experts=4,
                                             num_experts_per_tok=2, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2,
                                             mamba_dt_rank=8, use_mamba_kernels=False))
    return m.eval().to(DEVICE)


def _eager_greedy(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, new: int) -> torch.Tensor:
    return torch.tensor([tokens for tokens, _ in greedy_oracle(model, ids, mask, new, hf=True)], device=ids.device)


# (the interpreter is slow: Triton on Mamba alone, which has the scan, its ring and the kernels' literal-slot write)
@pytest.mark.parametrize("name, backend", [("mamba", "reference"), ("mamba", "triton"), ("falcon-mamba", "reference"),
                                           ("jamba", "reference")])
def test_state_space_models_decode_eager_tokens_with_their_states(name: str, backend: str,
                                                                  request: pytest.FixtureRequest) -> None:
    if backend == "triton" and not INTERP.runs_here(request):
        return
    model = _model(name)
    g = torch.Generator().manual_seed(1)
    lengths = [7, 3, 1]
    ids = torch.randint(3, VOCAB, (3, 7), generator=g)
    mask = (torch.arange(7)[None] < torch.tensor(lengths)[:, None]).long()
    ids, mask = (ids * mask).to(DEVICE), mask.to(DEVICE)
    compiled = membound.compile(model, backend=backend, cuda_graphs=False)
    with torch.no_grad():
        out = membound.generate(compiled, ids, 6, attention_mask=mask)
        assert torch.equal(out[:, 7:], _eager_greedy(model, ids, mask, 6))
        if backend == "reference":
            # a second call starts from zero states, not from the first call's (its prefill starts at position 0)
            again = membound.generate(compiled, ids.flip(0), 3, attention_mask=mask.flip(0))
            assert torch.equal(again[:, 7:], _eager_greedy(model, ids.flip(0), mask.flip(0), 3))
    program = compiled._kv_program
    scans = program.meta["scan_states"]
    layers = 2 if "mamba" in name else 1
    assert len(scans) == layers and len(program.meta["conv_states"]) == layers
    for s in scans:  # [B, d_inner, 1, N]: one state a row
        assert program.cache.buffers[s].shape == (3, 64, 1, 4)
    decode = program.decode_graph
    assert sum(n.op == "linear_scan" and len(n.inputs) == 3 for n in decode.nodes) == layers


def test_selective_scan_equals_hugging_faces_loop() -> None:
    """fp32, with the D skip, the gate, dt's bias and softplus, and the last state."""
    from transformers.models.mamba import modeling_mamba

    from membound.frontends.ssm import selective_scan

    g = torch.Generator().manual_seed(0)
    b, d, s, n = 2, 6, 9, 4
    x, dt, z = (torch.randn(b, d, s, generator=g) for _ in range(3))
    A = -torch.rand(d, n, generator=g) - 0.1  # noqa: N806
    B, C = torch.randn(b, n, s, generator=g), torch.randn(b, n, s, generator=g)  # noqa: N806
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)  # noqa: N806
    want, last = modeling_mamba.mamba_selective_scan(x, dt, A, B, C, D, z, bias, True, return_last_state=True)
    got, got_last = selective_scan(x, dt, A, B, C, D, z, bias, True, return_last_state=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_last, last, rtol=1e-5, atol=1e-5)
