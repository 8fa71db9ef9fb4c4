"""Sliding-window layers keep a KV cache of their window (a ring: position p in slot p mod W), on both
backends: the greedy tokens equal eager full recomputation when prompt + new tokens pass the window,
the buffers hold W slots, and the ring kernels equal the op's torch reference at odd sizes."""

from __future__ import annotations

import pytest
import torch
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

import membound
from membound.ir import get_op

INTERP = Interpreted(__file__)
VOCAB = 97
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _mistral(window: int, alternating: bool = False) -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=44, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=None,
                  pad_token_id=0, sliding_window=window)
    if alternating:  # layer 0 global, layer 1 sliding
        m = T.Qwen2ForCausalLM(T.Qwen2Config(**common, use_sliding_window=True, max_window_layers=1,
                                             attn_implementation="sdpa"))
    else:
        m = T.MistralForCausalLM(T.MistralConfig(**common, attn_implementation="sdpa"))
    m.generation_config.eos_token_id = None  # the oracle below does not stop at EOS
    return m.eval().to(DEVICE)


def _prompts(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return ids.to(DEVICE), mask.to(DEVICE)


def _eager_greedy(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, new: int) -> torch.Tensor:
    outs = []
    for row, m in zip(ids, mask):
        seq = row[m.bool()][None]
        for _ in range(new):
            logits = model(seq, use_cache=False).logits
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        outs.append(seq[0, -new:])
    return torch.stack(outs)


# (the interpreter is slow: Mistral on the reference backend, local + global layers on Triton; the
# other two pairings are in tests/e2e/test_attention_forms.py on the reference backend)
@pytest.mark.parametrize("backend, alternating", [("reference", False), ("triton", True)],
                         ids=["reference-mistral", "triton-local-global"])
def test_window_sized_ring_cache_decodes_eager_greedy_tokens(backend: str, alternating: bool,
                                                             request: pytest.FixtureRequest) -> None:
    # window 4 < prompts (9 and 3 tokens, right-padded) + 5 new tokens: the ring wraps during the
    # prefill of the long row and again while decoding (both rows: positions 4 and 12 land in slot 0)
    if backend == "triton" and not INTERP.runs_here(request):
        return
    window, new = 4, 5
    model = _mistral(window, alternating)
    ids, mask = _prompts([9, 3])
    compiled = membound.compile(model, backend=backend, cuda_graphs=False)
    with torch.no_grad():
        out = membound.generate(compiled, ids, new, attention_mask=mask)
        want = _eager_greedy(model, ids, mask, new)
    assert torch.equal(out[:, ids.shape[1]:], want), (out[:, ids.shape[1]:], want)
    program = compiled._kv_program
    rings = program.meta["rings"]
    buffers = program.cache.buffers
    assert rings and all(w == window for w in rings.values())
    for name, buf in buffers.items():
        # the cache allocation: a sliding-window layer holds its window, a global one the length bucket
        assert buf.shape[2] == (window if name in rings else program.cache.max_len), (name, tuple(buf.shape))
    assert len(rings) == (2 if alternating else 4)  # k and v per sliding layer


@pytest.mark.parametrize("s, d, g, window, cap, pos", [
    (1, 64, 1, 5, 5, 3),      # the ring not full yet
    (1, 80, 4, 7, 7, 30),     # wrapped several times
    (1, 128, 8, 5, 8, 12),    # a ring larger than the window
    (7, 64, 4, 3, 3, 0),      # prefill past the window (from position 0)
    (130, 64, 1, 17, 17, 0),
])
def test_ring_kernels_equal_the_reference(s: int, d: int, g: int, window: int, cap: int, pos: int,
                                          request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import cached_attention

    torch.manual_seed(1)
    b, hkv = 2, 2
    q = torch.randn(b, hkv * g, s, d, device=DEVICE)
    k_new, v_new = torch.randn(b, hkv, s, d, device=DEVICE), torch.randn(b, hkv, s, d, device=DEVICE)
    k, v = torch.randn(b, hkv, cap, d, device=DEVICE), torch.randn(b, hkv, cap, d, device=DEVICE)
    positions = (pos + torch.arange(s, device=DEVICE)).expand(b, s).contiguous()
    if s == 1:
        positions[1] += 2  # rows at different positions
    slots = positions % cap
    for cache, new in ((k, k_new), (v, v_new)):  # the step's own write into the ring
        cache.scatter_(2, slots[:, None, :, None].expand(b, hkv, s, d), new)
    ref = get_op("cached_attention").reference(q, k, v, positions, k_new, v_new, scale=None, window=window,
                                                softcap=None)
    got = cached_attention(q, k, v, positions, k_new, v_new, window=window)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)  # fp32


def test_ring_reference_sees_exactly_the_window() -> None:
    # decode over a wrapped ring equals plain attention over the last W positions of the sequence
    torch.manual_seed(2)
    window, length, d = 4, 11, 16
    keys, values = torch.randn(1, 1, length, d), torch.randn(1, 1, length, d)
    q = torch.randn(1, 2, 1, d)
    ring_k, ring_v = torch.zeros(1, 1, window, d), torch.zeros(1, 1, window, d)
    for p in range(length):
        ring_k[:, :, p % window], ring_v[:, :, p % window] = keys[:, :, p], values[:, :, p]
    pos = torch.tensor([length - 1])
    got = get_op("cached_attention").reference(q, ring_k, ring_v, pos, keys[:, :, -1:], values[:, :, -1:],
                                                scale=None, window=window, softcap=None)
    want = torch.nn.functional.scaled_dot_product_attention(q, keys[:, :, -window:], values[:, :, -window:],
                                                            enable_gqa=True)
    torch.testing.assert_close(got, want)


def test_ring_multi_token_step_past_position_zero_is_refused() -> None:
    q, kv = torch.randn(1, 2, 3, 8), torch.randn(1, 1, 4, 8)
    new = torch.randn(1, 1, 3, 8)
    with pytest.raises(ValueError, match="must start at position 0"):
        get_op("cached_attention").reference(q, kv, kv, torch.tensor([5, 6, 7]), new, new, scale=None, window=4,
                                             softcap=None)


def _in_order(cache: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """cache_write's meaning, one entry at a time in order of s (the last entry of a slot stays)."""
    out = cache.clone()
    for b in range(values.shape[0]):
        for s in range(values.shape[2]):
            p = int(positions[b, s] if positions.dim() == 2 else positions[s])
            out[b, :, p] = values[b, :, s]
    return out


@pytest.mark.parametrize("s, slots, per_row", [(9, 4, True), (130, 17, True), (11, 3, False), (5, 5, True)])
def test_entries_sharing_a_slot_are_written_in_order(s: int, slots: int, per_row: bool,
                                                     request: pytest.FixtureRequest) -> None:
    """A prefill longer than a ring writes positions p and p + W into one slot: the slot must hold the
    later one on every device (a GPU scatter kept either one, and a Mistral decoded wrong tokens)."""
    torch.manual_seed(2)
    b, h, d = 2, 3, 16
    cache = torch.randn(b, h, slots, d, device=DEVICE)
    values = torch.randn(b, h, s, d, device=DEVICE)
    positions = torch.arange(s, device=DEVICE).expand(b, s).contiguous()
    positions[1, s // 2:] = s // 2   # a padded row: its tail shares one position
    positions = positions % slots if per_row else positions[0] % slots
    want = _in_order(cache, values, positions)
    got = get_op("cache_write").reference(cache.clone(), values, positions, dim=2)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels.cache_write import cache_write

    torch.testing.assert_close(cache_write(cache.clone(), values, positions), want, rtol=0, atol=0)


@pytest.mark.gpu
def test_a_long_prefill_into_a_small_ring_is_the_same_every_time() -> None:
    from membound.backends.triton.kernels.cache_write import cache_write

    b, h, s, slots, d = 4, 8, 8192, 7, 128
    values = torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16)
    positions = (torch.arange(s, device="cuda") % slots).expand(b, s).contiguous()
    want = values[:, :, s - slots:].roll(s % slots, dims=2)   # slot t holds the last position = t mod 7
    for _ in range(5):
        for write in (cache_write, get_op("cache_write").reference):
            got = write(torch.zeros(b, h, slots, d, device="cuda", dtype=torch.bfloat16), values, positions, dim=2)
            assert torch.equal(got, want)


def test_a_ring_write_of_a_prefill_is_not_a_fused_store() -> None:
    from membound.backends.triton.lowering import cache_sink_refusal
    from membound.ir import parse

    g = parse("""graph @t(%x: f32[B, 2, S, 8], %pos: i64[B, S]) state(%cache: f32[B, 2, 4, 8]) {
        %w = constant() {value=4, dtype=i64} : i64[]
        %sl = remainder(%pos, %w) : i64[B, S]
        %y = exp(%x) : f32[B, 2, S, 8]
        %c = cache_write(%cache, %y, %sl) {dim=2} : f32[B, 2, 4, 8]
        return %c
    }""")
    write = next(n for n in g.nodes if n.op == "cache_write")
    assert cache_sink_refusal(write) == "more new entries (S) than cache slots (4) may share a slot"
    import sympy

    decode = g.specialized({sympy.Symbol("S", integer=True, positive=True): 1})   # one new token: no collision
    assert cache_sink_refusal(next(n for n in decode.nodes if n.op == "cache_write")) is None
