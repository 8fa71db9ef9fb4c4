"""Recurrent state beside the KV cache, on both backends: Mamba (its selective scan as one ``linear_scan``, its short
convolution as a ring of inputs), FalconMamba, Jamba (attention + Mamba + experts), Mamba-2 (heads of a scalar decay,
B and C shared by groups of heads), Bamba (attention + Mamba-2), Qwen3.5 (gated DeltaNet, its matrix state per head
a ``linear_attention`` with the delta rule, + gated attention) and RecurrentGemma (RG-LRU, reset at position 0, + local attention) decode eager's greedy tokens (the whole sequence recomputed per token, per row
without its padding) on right-padded rows of different lengths, one of a single token; the states are one per row
whatever the length. Also: membound's selective scan equals Hugging Face's reference loop, its Mamba-2 scan Hugging
Face's chunked (SSD) form, and its gated delta rule Hugging Face's chunked and recurrent forms."""

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
    if name == "mamba":  # expand 1: 32 channels (the Triton case runs a program per channel and token in the
        # interpreter, 73 s of CI at 64)
        m = T.MambaForCausalLM(T.MambaConfig(**common, state_size=4, expand=1, conv_kernel=3))
    elif name == "falcon-mamba":
        m = T.FalconMambaForCausalLM(T.FalconMambaConfig(**common, state_size=4, expand=2, conv_kernel=4))
    elif name == "mamba2":  # 4 heads of 16 in 2 groups; chunks of 4 (7 tokens: a partial chunk)
        m = T.Mamba2ForCausalLM(T.Mamba2Config(**common, num_heads=4, head_dim=16, n_groups=2, state_size=4, expand=2,
                                               conv_kernel=3, chunk_size=4))
    elif name == "bamba":  # layers: mamba-2, attention
        m = T.BambaForCausalLM(T.BambaConfig(**common, intermediate_size=48, num_attention_heads=4,
                                             num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=4,
                                             mamba_d_head=16, mamba_n_groups=2, mamba_d_state=4, mamba_d_conv=3,
                                             mamba_expand=2, mamba_chunk_size=4))
    elif name == "qwen3.5":  # layers: gated DeltaNet (2 key heads serving 4 value heads), gated attention
        m = T.Qwen3_5ForCausalLM(T.Qwen3_5TextConfig(**common, intermediate_size=48, num_attention_heads=4,
                                                     num_key_value_heads=2, head_dim=8,
                                                     layer_types=["linear_attention", "full_attention"],
                                                     linear_conv_kernel_dim=3, linear_key_head_dim=8,
                                                     linear_value_head_dim=16, linear_num_key_heads=2,
                                                     linear_num_value_heads=4))
    elif name == "recurrent-gemma":  # layers: RG-LRU recurrent block, local attention
        m = T.RecurrentGemmaForCausalLM(T.RecurrentGemmaConfig(**common, intermediate_size=48, num_attention_heads=4,
                                                               num_key_value_heads=1, head_dim=8,
                                                               block_types=["recurrent", "attention"], lru_width=32,
                                                               conv1d_width=3, attention_window_size=16))
    else:  # layers: mamba, attention + experts
        m = T.JambaForCausalLM(T.JambaConfig(**common, intermediate_size=48, num_attention_heads=4,
                                             num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1,
                                             expert_layer_period=2, expert_layer_offset=1, num_experts=4,
                                             num_experts_per_tok=2, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2,
                                             mamba_dt_rank=8, use_mamba_kernels=False))
    return m.eval().to(DEVICE)


def _eager_greedy(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, new: int) -> torch.Tensor:
    return torch.tensor([tokens for tokens, _ in greedy_oracle(model, ids, mask, new, hf=True)], device=ids.device)


def _right_padded_rows() -> tuple[torch.Tensor, torch.Tensor]:
    """Three right-padded rows of 7, 3 and 1 tokens: (ids, mask)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 7), generator=g)
    mask = (torch.arange(7)[None] < torch.tensor([7, 3, 1])[:, None]).long()
    return (ids * mask).to(DEVICE), mask.to(DEVICE)


# (the interpreter is slow: Triton on Mamba, which has the scan, its ring and the kernels' literal-slot write, and on
# Qwen3.5, whose linear_attention has the delta rule; Mamba-2's plain write is in the kernel's own tests)
@pytest.mark.parametrize("name, backend", [("mamba", "reference"), ("mamba", "triton"), ("falcon-mamba", "reference"),
                                           ("jamba", "reference"), ("mamba2", "reference"),
                                           ("bamba", "reference"), ("qwen3.5", "reference"), ("qwen3.5", "triton"),
                                           ("recurrent-gemma", "reference")])
def test_state_space_models_decode_eager_tokens_with_their_states(name: str, backend: str,
                                                                  request: pytest.FixtureRequest) -> None:
    if backend == "triton" and not INTERP.runs_here(request):
        return
    model = _model(name)
    ids, mask = _right_padded_rows()
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
    # one state a row: [B, d_inner, 1, N] (Mamba), [B, 1, heads, N, head_dim] (Mamba-2), [B, 1, heads, K, V]
    # (DeltaNet)
    shape = {"mamba2": (3, 1, 4, 4, 16), "bamba": (3, 1, 4, 4, 16), "qwen3.5": (3, 1, 4, 8, 16),
             "recurrent-gemma": (3, 1, 32), "mamba": (3, 32, 1, 4)}.get(name, (3, 64, 1, 4))
    for s in scans:
        assert program.cache.buffers[s].shape == shape
    decode = program.decode_graph
    # (linear_attention: its state read and written in place by one op, MEMBOUND_STATE_INPLACE's default)
    op, arity = ("linear_attention_state", 7) if name in ("qwen3.5", "mamba2", "bamba") else ("linear_scan", 3)
    assert sum(n.op == op and len(n.inputs) == arity for n in decode.nodes) == layers
    if backend == "triton":
        # the short convolution's step: its ring written by one kernel, read (gather at the slots, masked before
        # the row's start) and convolved by the next; no torch gather between them (canonicalize's slice rules)
        partition = program.decode.partition
        assert not any(c.node.op == "gather" for c in partition.calls), partition.describe()
        conv = [k for k in partition.kernels if {"gather", "where", "silu"} <= {m.op for m in k.members}]
        assert len(conv) == layers, partition.describe()
        if name == "qwen3.5":  # in_proj_a (its dt_bias folded in as a bias) merged with the other input projections
            weights = [n.inputs[1].name for n in decode.nodes if n.op == "linear"]
            assert [w for w in weights if "in_proj_a" in w] == [w for w in weights if "in_proj_qkv" in w], weights
            assert sum(n.op == "linear" and len(n.inputs) == 3 for n in decode.nodes) == 1, partition.describe()
            # the q and k l2 norms (independent rows of one length): one row kernel reduces a row of each
            norms = [k for k in partition.kernels if k.layout == "row" and sum(m.op == "sum" for m in k.members) == 2]
            assert len(norms) == layers, partition.describe()


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


@pytest.mark.parametrize("length", [9, 8, 1])
def test_chunk_scan_equals_hugging_faces_chunked_form(length: int) -> None:
    """fp32: 6 heads of 5 in 3 groups, chunks of 4 (9 tokens: a partial last chunk; 1: a chunk of one), dt's bias,
    softplus and limit, the D skip, an initial state and the final state."""
    from transformers.models.mamba2 import modeling_mamba2

    from membound.frontends.ssm import chunk_scan

    g = torch.Generator().manual_seed(0)
    b, h, p, n, groups = 2, 6, 5, 4, 3
    x, dt = torch.randn(b, length, h, p, generator=g), torch.randn(b, length, h, generator=g)
    A, D, bias = -torch.rand(h, generator=g) - 0.1, torch.randn(h, generator=g), torch.randn(h, generator=g)  # noqa: N806
    B, C = torch.randn(b, length, groups, n, generator=g), torch.randn(b, length, groups, n, generator=g)  # noqa: N806
    init = torch.randn(b, h, p, n, generator=g)
    kw = dict(chunk_size=4, D=D, dt_bias=bias, initial_states=init, dt_softplus=True, dt_limit=(0.0, 2.0),
              return_final_states=True)
    want, last = modeling_mamba2.mamba2_chunk_scan(x, dt, A, B, C, **kw)
    got, got_last = chunk_scan(x, dt, A, B, C, **kw)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want.reshape(got.shape), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_last, last, rtol=1e-4, atol=1e-4)
    # and without the initial state, the final state or D
    kw.update(initial_states=None, return_final_states=False, D=None)
    torch.testing.assert_close(chunk_scan(x, dt, A, B, C, **kw),
                               modeling_mamba2.mamba2_chunk_scan(x, dt, A, B, C, **kw).reshape(got.shape),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("length", [9, 1])
def test_gated_delta_rule_equals_hugging_faces_chunked_and_recurrent_forms(length: int) -> None:
    """fp32: 2 query/key heads serving 4 value heads (K = 5, V = 6), chunks of 4 (9 tokens: a partial chunk), the
    l2-normalised query and key, an initial state and the final state; and the recurrent form from that state."""
    from transformers.models.qwen3_5 import modeling_qwen3_5 as hf

    from membound.frontends.ssm import gated_delta_rule

    g = torch.Generator().manual_seed(0)
    b, hk, h, kd, vd = 2, 2, 4, 5, 6
    q, k = torch.randn(b, length, hk, kd, generator=g), torch.randn(b, length, hk, kd, generator=g)
    v = torch.randn(b, length, h, vd, generator=g)
    decay, beta = -torch.rand(b, length, h, generator=g), torch.rand(b, length, h, generator=g)
    init = torch.randn(b, h, kd, vd, generator=g)
    kw = dict(initial_state=init, output_final_state=True, use_qk_l2norm_in_kernel=True)
    got, got_last = gated_delta_rule(q, k, v, decay, beta, chunk_size=4, **kw)
    # (HF's caller repeats the query/key heads before the call in transformers 5.17, the function itself in 5.25)
    qh, kh = q.repeat_interleave(h // hk, dim=2), k.repeat_interleave(h // hk, dim=2)
    for form in (hf.torch_chunk_gated_delta_rule, hf.torch_recurrent_gated_delta_rule):
        extra = dict(chunk_size=4) if form is hf.torch_chunk_gated_delta_rule else {}
        want, last = form(qh, kh, v, decay, beta, **extra, **kw)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_last, last, rtol=1e-4, atol=1e-4)
    # without the initial state, the final state or the normalisation
    kw = dict(initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False)
    out, none = gated_delta_rule(q, k, v, decay, beta, **kw)
    assert none is None
    torch.testing.assert_close(out, hf.torch_recurrent_gated_delta_rule(qh, kh, v, decay, beta, **kw)[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("length", [9, 1])
def test_kimi_delta_attention_equals_hugging_faces_chunked_and_recurrent_forms(length: int) -> None:
    """fp32: Kimi's KDA, a decay per key channel (K = 5, V = 6, 3 heads), chunks of 4, the l2-normalised query and
    key (FLA's form), an initial state and the final state."""
    from transformers.models.kimi_linear import modeling_kimi_linear as hf

    from membound.frontends.ssm import kimi_delta_attention

    g = torch.Generator().manual_seed(0)
    b, h, kd, vd = 2, 3, 5, 6
    q, k = torch.randn(b, length, h, kd, generator=g), torch.randn(b, length, h, kd, generator=g)
    v = torch.randn(b, length, h, vd, generator=g)
    decay, beta = -torch.rand(b, length, h, kd, generator=g), torch.rand(b, length, h, generator=g)
    init = torch.randn(b, h, kd, vd, generator=g)
    kw = dict(initial_state=init, output_final_state=True, use_qk_l2norm_in_kernel=True)
    got, got_last = kimi_delta_attention(q, k, v, decay, beta, chunk_size=4, **kw)
    for want, last in (hf.chunk_kimi_delta_attention(q, k, v, decay, beta, chunk_size=4, **kw),
                       hf.recurrent_kimi_delta_attention(q, k, v, decay, beta, **kw)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_last, last, rtol=1e-4, atol=1e-4)


def test_rnn_scan_equals_recurrent_gemmas_loop() -> None:
    """fp32 and fp16 inputs (the state in fp32), a reset mid-row, with and without an initial state."""
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaRglru

    from membound.frontends.ssm import rnn_scan

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(2, 7, 5, generator=g).to(dtype)
        a = torch.rand(2, 7, 5, generator=g)
        reset = torch.zeros(2, 7, 1, dtype=torch.bool)
        reset[:, 0], reset[1, 4] = True, True
        for init in (None, torch.randn(2, 5, generator=g)):
            want, last = RecurrentGemmaRglru._rnn_scan(None, x, a, reset, init)
            got, got_last = rnn_scan(None, x, a, reset, init)
            assert got.dtype == want.dtype and got_last.dtype == last.dtype == torch.float32
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(got_last, last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [11, 1])
def test_lightning_attention_equals_minimaxs_block_form(length: int) -> None:
    """fp32, one MiniMax lightning-attention layer (4 heads of 8, blocks of 4: 11 tokens end in a partial block) on a
    padded batch: membound's recurrence equals HF's block loop, output and last state."""
    import transformers as T
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    from membound.frontends.ssm import lightning_attention_forward

    cfg = T.MiniMaxConfig(hidden_size=32, num_attention_heads=4, head_dim=8, num_hidden_layers=2, block_size=4,
                          layer_types=["linear_attention", "full_attention"])
    torch.manual_seed(0)
    layer = MiniMaxLightningAttention(cfg, 0).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, length, 32)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :length // 2] = 0  # left padding zeroes those tokens' q, k, v
    with torch.no_grad():
        want, want_state = layer(x, None, mask)
        got, got_state = lightning_attention_forward(layer, x, None, mask)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_state, want_state, rtol=1e-4, atol=1e-4)


def test_the_unfused_state_update_decodes_the_same_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """``MEMBOUND_STATE_INPLACE=0``: Qwen3.5's DeltaNet state read through ``where``, the step a ``linear_attention``,
    its last state written by ``cache_write``; the tokens are eager's all the same (reference backend)."""
    monkeypatch.setenv("MEMBOUND_STATE_INPLACE", "0")
    model = _model("qwen3.5")
    ids, mask = _right_padded_rows()
    compiled = membound.compile(model, backend="reference", cuda_graphs=False)
    with torch.no_grad():
        out = membound.generate(compiled, ids, 4, attention_mask=mask)
    assert torch.equal(out[:, 7:], _eager_greedy(model, ids, mask, 4))
    ops = [n.op for n in compiled._kv_program.decode_graph.nodes]
    assert "linear_attention_state" not in ops and ops.count("linear_attention") == 1
