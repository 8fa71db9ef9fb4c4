"""membound.generate: cached greedy decoding equals full recomputation, token for token (fp32, CPU)."""

import pytest
import torch

import membound
from membound.api import KVCacheError
from membound.models import build_model
from membound.runtime.kv_cache import CacheCapacityError

from .hf_models import VOCAB, build_hf

NEW = 32


def prompts(vocab: int, lengths, seed: int = 0):
    """Right-padded ids and the attention mask for rows of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), longest), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return ids, mask


def recompute(model, ids, mask, new):
    """The oracle: eager full recomputation, one row at a time, argmax of the last position."""
    outs = []
    for row, m in zip(ids, mask):
        seq = row[m.bool()][None]
        for _ in range(new):
            res = model(seq) if not hasattr(model, "config") or not hasattr(model.config, "use_cache") \
                else model(seq, use_cache=False)
            logits = res if isinstance(res, torch.Tensor) else res.logits
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        outs.append(seq[0, -new:])
    return torch.stack(outs)


CASES = [("builtin", "llama-tiny"), ("builtin", "gpt2-tiny"), ("builtin", "mixtral-tiny"),
         ("hf", "llama"), ("hf", "qwen2"), ("hf", "gpt2-eager"),
         # OPT counts its positions (cumsum of a mask of ones): decoded with position 0 at every step, silently,
         # until insert-kv-cache learned that count (session 15)
         ("hf", "opt"),
         # GPT-J gathers its rotary rows with table[position_ids] (an index op): refused with "index ... cannot make
         # per-row" until insert-kv-cache treated that gather like an embedding (session 15)
         ("hf", "gptj")]


def _build(kind, name):
    if kind == "builtin":
        m = build_model(name)
        return m, m.config.vocab_size
    return build_hf(name), VOCAB


@pytest.mark.parametrize("kind, name", CASES)
@pytest.mark.parametrize("lengths", [[9], [5, 11, 8]])
def test_greedy_generate_equals_full_recompute(kind, name, lengths):
    model, vocab = _build(kind, name)
    ids, mask = prompts(vocab, lengths)
    compiled = membound.compile(model)
    with torch.no_grad():
        out = membound.generate(compiled, ids, NEW, attention_mask=mask)
        ref = recompute(model, ids, mask, NEW)
    assert out.shape == (len(lengths), ids.shape[1] + NEW)
    assert torch.equal(out[:, :ids.shape[1]], ids)          # the prompt comes back first, as in HF
    assert torch.equal(out[:, ids.shape[1]:], ref), (out[:, ids.shape[1]:], ref)


@pytest.fixture(scope="module")
def llama():
    """One compiled llama-tiny for the tests that only call generate on it (its capture and KV program are
    built once; the cache-reuse and capacity tests compile their own)."""
    model = build_model("llama-tiny")
    return model, membound.compile(model)


def test_left_padding_gives_the_same_tokens_as_right_padding(llama):
    _, compiled = llama
    ids, mask = prompts(256, [4, 7])
    left = torch.zeros_like(ids)
    lmask = torch.zeros_like(mask)
    for i, n in enumerate([4, 7]):
        left[i, 7 - n:] = ids[i, :n]
        lmask[i, 7 - n:] = 1
    a = membound.generate(compiled, ids, 6, attention_mask=mask)[:, 7:]
    b = membound.generate(compiled, left, 6, attention_mask=lmask)[:, 7:]
    assert torch.equal(a, b)


def test_cache_is_reused_across_calls_without_reallocation():
    model = build_model("llama-tiny")
    compiled = membound.compile(model)
    ids, mask = prompts(256, [6, 9])
    membound.generate(compiled, ids, 10, attention_mask=mask)
    cache = compiled._kv_program.cache
    assert cache.allocations == 1
    membound.generate(compiled, ids[:1, :5], 8)        # smaller batch and length: same buffers
    membound.generate(compiled, ids, 10, attention_mask=mask)
    assert cache.allocations == 1
    membound.generate(compiled, ids, 40, attention_mask=mask)  # longer, inside the capacity bucket
    assert cache.allocations == 1
    membound.generate(compiled, torch.randint(3, 256, (2, 250)), 10)  # past the bucket: grows once
    assert cache.allocations == 2


def test_cache_holds_kv_heads_not_query_heads(llama):
    model, compiled = llama                         # 4 query heads, 2 kv heads
    membound.generate(compiled, torch.randint(0, 256, (1, 5)), 2)
    for name, buf in compiled._kv_program.cache.buffers.items():
        assert buf.shape[1] == model.config.n_kv_heads, name


def test_max_length_error_says_the_limit_and_how_to_raise_it():
    model = build_model("gpt2-tiny")                 # 128 learned positions
    compiled = membound.compile(model)
    with pytest.raises(CacheCapacityError, match="128"):
        membound.generate(compiled, torch.randint(0, 256, (1, 100)), 40)
    with pytest.raises(CacheCapacityError, match="max_cache_len"):
        membound.generate(membound.compile(build_model("llama-tiny")), torch.randint(0, 256, (1, 10)), 30,
                          max_cache_len=32)


class _Compressor(torch.nn.Module):
    """A causal model whose keys gain a summary entry once the sequence reaches 8 tokens (DeepSeek-V4's compressed
    attention emits its first entry at compress_rate tokens): captured at 5 tokens, torch.export proves the path
    only for S <= 7."""

    def __init__(self, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.qkv = torch.nn.Linear(d, 3 * d, bias=False)
        self.summary = torch.nn.Linear(d, d, bias=False)
        self.head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        q, k, v = self.qkv(h)[:, None].chunk(3, dim=-1)
        usable = ids.shape[1] // 8 * 8
        if usable > 0:  # one summary key a full window of 8, visible to every query
            block = self.summary(h[:, :usable].reshape(h.shape[0], -1, 8, h.shape[-1]).mean(2))[:, None]
            k2, v2 = torch.cat([block, k], dim=2), torch.cat([block, v], dim=2)
            mask = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
            mask = torch.cat([torch.ones(ids.shape[1], block.shape[2], dtype=torch.bool), mask], dim=1)
            o = torch.nn.functional.scaled_dot_product_attention(q, k2, v2, attn_mask=mask)
        else:
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(h + o[:, 0])


def test_a_capture_proven_for_short_sequences_limits_the_cached_decode():
    """A capture torch.export proves only for S <= 7 is the model only up to 7 positions: within them the cached
    decode equals recomputation; past them generate refuses (it used to decode the short-sequence path silently,
    wrong from the 8th position), naming the limit and kv_cache=False, which then gives recomputation's tokens."""
    torch.manual_seed(0)
    model = _Compressor().eval()
    compiled = membound.compile(model)
    ids = torch.randint(0, 50, (1, 5))
    ones = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.equal(membound.generate(compiled, ids, 2)[:, 5:], recompute(model, ids, ones, 2))
        with pytest.raises(CacheCapacityError, match=r"at most 7 positions.*kv_cache=False"):
            membound.generate(compiled, ids, 12)
        assert torch.equal(membound.generate(compiled, ids, 12, kv_cache=False)[:, 5:], recompute(model, ids, ones, 12))


class _PositionForms(torch.nn.Module):
    """A user's decoder whose positions come in a form of its own: a table sliced to the sequence (``"rows"``:
    ``wpe[:S]``; ``"mingpt"``: ``pos_emb[:, :S, :]`` of a ``[1, 64, D]`` table; ``"offset"``: ``wpe[2 : S + 2]``;
    ``"strided"``: ``wpe[: 2 * S : 2]``), a causal depthwise convolution over the tokens (``"conv"``; ``"future"``:
    over the token and the two after it), a token shift by a padding (``"shift"``) or by a gather (``"gather"``), or
    every token reading the first (``"first"``)."""

    def __init__(self, form: str, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.form = form
        self.emb = torch.nn.Embedding(vocab, d)
        self.wpe = torch.nn.Parameter(torch.randn(64, d))
        self.pos_emb = torch.nn.Parameter(torch.randn(1, 64, d))
        self.conv = torch.nn.Conv1d(d, d, 3, groups=d, padding=2)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        s, h = ids.shape[1], self.emb(ids)
        if self.form == "rows":
            h = h + 3 * self.wpe[:s]
        elif self.form == "mingpt":
            h = h + 3 * self.pos_emb[:, :s, :]
        elif self.form == "offset":
            h = h + 3 * self.wpe[2:s + 2]
        elif self.form == "strided":
            h = h + 3 * self.wpe[:2 * s:2]
        elif self.form == "gather":  # each token reads the one before it (a token shift by a gather)
            h = h + 3 * h[:, (torch.arange(s, device=ids.device) - 1).clamp(min=0)]
        elif self.form == "first":  # every token reads the first one
            h = h + 3 * h[:, :1]
        elif self.form == "shift":  # a token shift: each token mixed with the one before it (zeros before the first)
            h = h + 3 * torch.nn.functional.pad(h[:, :-1], (0, 0, 1, 0))
        elif self.form == "future":  # a convolution over the token and the two after it
            h = h + 3 * self.conv(h.transpose(1, 2))[..., 2:s + 2].transpose(1, 2)
        else:
            h = h + 3 * self.conv(h.transpose(1, 2))[..., :s].transpose(1, 2)
        q, k, v = self.qkv(h)[:, None].chunk(3, dim=-1)
        return self.head(h + torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)[:, 0])


@pytest.mark.parametrize("form", ["rows", "mingpt", "offset"])
def test_a_position_table_read_by_slicing_decodes_at_each_positions_rows(form):
    """``wpe[:S]`` (minGPT's ``pos_emb[:, :S, :]``, an offset's ``wpe[2:S+2]``) is the table's rows at the positions
    (+ the offset): the cached decode reads the row of each step's position (it used to read the first rows at every
    step, wrong from the second new token). Greedy tokens equal recomputation with left padding."""
    torch.manual_seed(0)
    model = _PositionForms(form).eval()
    ids, mask = prompts(50, [6, 3])
    with torch.no_grad():
        out = membound.generate(membound.compile(model), ids, 10, attention_mask=mask)
        assert torch.equal(out[:, ids.shape[1]:], recompute(model, ids, mask, 10))


@pytest.mark.parametrize("form", ["conv", "shift"])
def test_a_causal_convolution_over_the_tokens_decodes_with_a_ring_state(form):
    """A causal depthwise convolution (``conv1d(padding=2)[..., :S]``, LFM2's short convolution) and a token shift
    read the positions before their own: the cache keeps the last ones in a ring state per convolution (it was refused
    before; before that it decoded wrong tokens silently). Greedy tokens equal recomputation with left padding (rows
    of different lengths: a padded prefill; one row of one or two tokens, whose first steps read position 0 from the
    ring), past the ring's slots many times over."""
    torch.manual_seed(0)
    model = _PositionForms(form).eval()
    ids, mask = prompts(50, [6, 3, 1, 2, 1, 1])
    compiled = membound.compile(model)
    with torch.no_grad():
        out = membound.generate(compiled, ids, 10, attention_mask=mask)
        assert torch.equal(out[:, ids.shape[1]:], recompute(model, ids, mask, 10))
    states = compiled._kv_program.meta["conv_states"]
    assert list(states.values()) == [3 if form == "conv" else 2]
    assert compiled._kv_program.cache.buffers[next(iter(states))].shape == ((6, 16, 3) if form == "conv" else (6, 2, 16))


@pytest.mark.parametrize("form, why", [("future", "reads 2 position\\(s\\) after its own"),
                                       ("strided", "in a form this pass does not know"),
                                       ("gather", "gathers along the sequence dim"),
                                       ("first", "reads fixed slots 0 to 1 of the sequence dim")])
def test_positions_mixed_in_other_ways_refuse_the_cache_and_say_why(form, why):
    """A causal convolution over the tokens (each position reads the two before it, which the KV cache does not hold)
    a strided slice of a position table and every token reading the first one decoded with the cache were silently
    wrong, a token shift by a gather failed inside the pass; now generate refuses with the reason, and
    ``kv_cache=False`` gives recomputation's tokens."""
    torch.manual_seed(0)
    model = _PositionForms(form).eval()
    ids, mask = prompts(50, [6, 3])
    compiled = membound.compile(model)
    with torch.no_grad():
        with pytest.raises(KVCacheError, match=why):
            membound.generate(compiled, ids, 4, attention_mask=mask)
        out = membound.generate(compiled, ids, 4, attention_mask=mask, kv_cache=False)
        assert torch.equal(out[:, ids.shape[1]:], recompute(model, ids, mask, 4))


class _NanoGPTLike(torch.nn.Module):
    """nanoGPT's inference forward: ``(lm_head(x[:, [-1], :]), None)`` without targets, the model picking its last
    token itself."""

    def __init__(self, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(vocab, d), torch.nn.Embedding(64, d)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor, targets: object = None) -> tuple:
        x = self.wte(idx) + self.wpe(torch.arange(0, idx.shape[1], dtype=torch.long, device=idx.device))
        q, k, v = self.qkv(x)[:, None].chunk(3, dim=-1)
        x = x + torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)[:, 0]
        return self.lm_head(x[:, [-1], :]), None


def test_a_model_that_picks_its_last_token_decodes_with_the_cache():
    """nanoGPT's ``x[:, [-1], :]`` is each row's last position: the cached program picks each row's last real token
    there (rows right-padded), and greedy tokens equal the model's own step-by-step loop. (Refused before: its
    logits were not [B, S, V].)"""
    torch.manual_seed(0)
    model = _NanoGPTLike().eval()
    ids, mask = prompts(50, [6, 3])
    with torch.no_grad():
        out = membound.generate(membound.compile(model), ids, 8, attention_mask=mask)
        for i, (row, m) in enumerate(zip(ids, mask)):
            seq = row[m.bool()][None]
            for _ in range(8):
                seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
            assert out[i, ids.shape[1]:].tolist() == seq[0, -8:].tolist()


class _MinGPTAttention(torch.nn.Module):
    """minGPT's attention: a registered ``tril(ones(64, 64))`` buffer sliced ``[:, :, :T, :T]`` and ``masked_fill``ed,
    a learned position table of 64 rows."""

    def __init__(self, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(vocab, d), torch.nn.Embedding(64, d)
        self.c_attn, self.c_proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)
        self.register_buffer("bias", torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(0, t, device=idx.device))
        q, k, v = (y.view(b, t, 2, 8).transpose(1, 2) for y in self.c_attn(x).split(16, dim=2))
        att = (q @ k.transpose(-2, -1)) * (1.0 / 8 ** 0.5)
        att = torch.softmax(att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf")), dim=-1)
        return self.lm_head(x + self.c_proj((att @ v).transpose(1, 2).contiguous().view(b, t, 16)))


def test_a_stored_causal_mask_sliced_to_the_sequence_is_proven_and_decodes_with_the_cache():
    """minGPT's stored triangle sliced to the sequence is proven causal at every size up to its 64 rows (past them
    the model cannot run; it used to be refused, evaluated at 65): greedy tokens with the cache equal recomputation,
    and a call past 64 positions is refused naming the limit."""
    torch.manual_seed(0)
    model = _MinGPTAttention().eval()
    compiled = membound.compile(model)
    ids, mask = prompts(50, [6, 3])
    with torch.no_grad():
        out = membound.generate(compiled, ids, 8, attention_mask=mask)
        assert torch.equal(out[:, ids.shape[1]:], recompute(model, ids, mask, 8))
        with pytest.raises(CacheCapacityError, match="64"):
            membound.generate(compiled, ids, 60, attention_mask=mask)


def test_eos_stops_rows_and_pads_after(llama):
    _, compiled = llama
    ids = torch.randint(3, 256, (2, 6))
    free = membound.generate(compiled, ids, 12)
    eos = int(free[0, 6 + 2])                         # row 0's third new token
    out = membound.generate(compiled, ids, 12, eos_token_id=eos, pad_token_id=0)
    row0 = out[0, 6:].tolist()
    k = row0.index(eos)
    assert all(t == 0 for t in row0[k + 1:])


def test_sampling_is_reproducible_and_respects_top_k(llama):
    _, compiled = llama
    ids = torch.randint(3, 256, (2, 6))
    a = membound.generate(compiled, ids, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(3))
    b = membound.generate(compiled, ids, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # top_k=1 sampling is greedy
    g = membound.generate(compiled, ids, 10)
    s = membound.generate(compiled, ids, 10, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g, s)


def test_stream_callback_sees_every_step(llama):
    seen = []
    out = membound.generate(llama[1], torch.randint(0, 256, (2, 4)), 5, stream=seen.append)
    assert torch.equal(torch.stack(seen, 1), out[:, 4:])


def test_bidirectional_model_is_refused_with_reason():
    class Bidirectional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.qkv = torch.nn.Linear(16, 48)
            self.head = torch.nn.Linear(16, 50)

        def forward(self, ids):
            x = self.emb(ids)
            q, k, v = self.qkv(x).unflatten(-1, (3, 2, 8)).permute(2, 0, 3, 1, 4)
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # no causal mask
            return self.head(x + a.transpose(1, 2).flatten(2))

    with pytest.raises(KVCacheError, match="bidirectional"):
        membound.generate(Bidirectional().eval(), torch.randint(0, 50, (1, 5)), 3)


class _TokenLoop(torch.nn.Module):
    """A recurrence written as a Python loop over the tokens (Mamba's reference selective scan): torch.export pins
    the sequence length it was captured at."""

    def __init__(self, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(vocab, d), torch.nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, state, outs = self.emb(ids), torch.zeros(ids.shape[0], self.emb.embedding_dim), []
        for i in range(ids.shape[1]):
            state = 0.5 * state + h[:, i]
            outs.append(state)
        return self.head(torch.stack(outs, dim=1))


def test_a_python_loop_over_the_tokens_refuses_the_cache_naming_the_pinned_length():
    """Before: "no graph input has shape [B, S, ...]", which did not say why. Now the refusal names the pinned length
    and the reason, and ``kv_cache=False`` recomputes (a capture per length) equal to eager."""
    torch.manual_seed(0)
    model = _TokenLoop().eval()
    ids, mask = prompts(50, [5, 5])
    compiled = membound.compile(model)
    with torch.no_grad():
        with pytest.raises(KVCacheError, match=r"pinned the sequence length of %\w+ to 5 .*a Python loop over the "):
            membound.generate(compiled, ids, 3)
        out = membound.generate(compiled, ids, 3, kv_cache=False)
        assert torch.equal(out[:, ids.shape[1]:], recompute(model, ids, mask, 3))
