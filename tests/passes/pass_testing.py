"""Helpers for pass tests: IR-text before/after, unchanged-graph and numerical-equivalence checks."""

from __future__ import annotations

from typing import Any, Optional

import sympy
import torch

from membound.backends.reference import run_graph
from membound.ir import Graph, Value, parse, print_graph, structurally_equal, sym, verify
from membound.passes import PassContext, PassFn

# concrete sizes for the symbolic dims in test graphs: odd, and B includes the size-1 case elsewhere
BINDINGS = {"B": 3, "S": 5, "T": 7}


def random_tensor(v: Value, bindings: dict[sympy.Symbol, int], gen: torch.Generator) -> torch.Tensor:
    shape = v.type.concrete_shape(bindings)
    if v.dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if v.dtype.is_floating_point:
        # never zero, away from 0 so division and rsqrt stay well conditioned
        mag = torch.rand(shape, generator=gen) + 0.5
        sign = torch.where(torch.rand(shape, generator=gen) > 0.5, 1.0, -1.0)
        return (mag * sign).to(v.dtype)
    return torch.randint(1, 7, shape, generator=gen).to(v.dtype)


def parse_with_params(text: str, seed: int = 0) -> Graph:
    """Parse ``text`` and bind random tensors to its params (and state)."""
    g = parse(text)
    gen = torch.Generator().manual_seed(seed)
    binds = {sym(k): n for k, n in BINDINGS.items()}
    for v in list(g.params) + list(g.state):
        g.tensors[v.name] = random_tensor(v, binds, gen)
    verify(g)
    return g


def apply(p: PassFn, g: Graph, ctx: Optional[PassContext] = None) -> bool:
    ctx = ctx if ctx is not None else PassContext()
    changed = p(g, ctx)
    verify(g)
    return changed


def check_rewrite(p: PassFn, before: str, expected: str) -> Graph:
    """``before`` -> the pass -> structurally equal to ``expected`` (and the pass says it changed)."""
    g = parse_with_params(before)
    assert apply(p, g) is True, f"pass did not fire on:\n{before}"
    want = parse(expected)
    diff = structurally_equal(g, want, explain=True)
    assert diff == "", f"{diff}\n--- got:\n{print_graph(g)}--- expected:\n{print_graph(want)}"
    return g


def check_unchanged(p: PassFn, text: str) -> None:
    """The pass returns False and leaves the printed graph identical."""
    g = parse_with_params(text)
    before = print_graph(g)
    assert apply(p, g) is False
    assert print_graph(g) == before


def check_numerics(p: PassFn, text: str, bindings: Optional[dict[str, int]] = None, seed: int = 0,
                   rtol: float = 1e-6, atol: float = 1e-6, must_change: bool = True) -> Graph:
    """Outputs before and after the pass agree on random inputs (reference backend)."""
    g = parse_with_params(text, seed)
    binds = {sym(k): n for k, n in (bindings or BINDINGS).items()}
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = [random_tensor(v, binds, gen) for v in g.inputs]
    before = run_graph(g.copy(), inputs)
    changed = apply(p, g)
    assert changed or not must_change, f"pass did not fire on:\n{text}"
    after = run_graph(g, inputs)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol)
    return g


def tiny_hf(family: str) -> torch.nn.Module:
    """A two-layer HF ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` (a q/k/v bias) / ``MistralForCausalLM`` with random
    weights (hidden 48, 4 heads over 2 kv heads, vocab 97), in eval mode."""
    import transformers as tf

    common = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
    cfg = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[family](**common)
    torch.manual_seed(0)
    return {"llama": tf.LlamaForCausalLM, "qwen2": tf.Qwen2ForCausalLM,
            "mistral": tf.MistralForCausalLM}[family](cfg).eval()


def triton_decode_with(pipeline: str, model: torch.nn.Module, rows: int, op: str, monkeypatch: Any) -> None:
    """Greedy generate on the triton backend with decode pipeline ``pipeline`` equals the default pipeline's tokens
    (``rows`` prompts of 7 tokens, the last left-padded by 3 when there are several); at one row every ``op`` call
    ran its one-launch kernel, at several the library's kernels in turn, the trace saying why."""
    import membound
    from membound.backends.triton.kernels._launch import trace

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    ids = torch.randint(0, 97, (rows, 7), generator=torch.Generator().manual_seed(3)).to(device)
    mask = torch.ones_like(ids)
    mask[rows - 1, :3] = 0 if rows > 1 else 1
    want = membound.generate(membound.compile(model, backend="triton"), ids, 4, attention_mask=mask)
    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", pipeline)
    compiled = membound.compile(model, backend="triton")
    with trace() as calls:
        got = membound.generate(compiled, ids, 4, attention_mask=mask)
    assert torch.equal(got, want)
    paths = {c[1] for c in calls if c[0] == op}
    if rows == 1:
        assert paths == {"kernel"}, sorted(set(calls))
    else:
        assert paths == {f"fallback: {rows} tokens (the one-launch kernel takes one: batch 1): the library's kernels "
                         "in turn"}, paths
