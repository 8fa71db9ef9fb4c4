"""The parser and the verifier on broken text and broken graphs.

The fuzzer (``membound.ir.fuzz``) mutates the printed graphs in ``tests/ir/corpus/`` (llama-tiny and
gpt2-tiny after the default pipeline, llama-tiny's KV decode step); every variant must parse and
verify, or fail with ``ParseError`` / ``VerificationError``. 300 cases from fixed seeds here;
``benches/fuzz_ir.py --minutes N`` for long runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy
import torch

from membound.ir import Graph, ParseError, VerificationError, parse, verify
from membound.ir.fuzz import check, run
from membound.ir.types import TensorType
from membound.passes.manager import PassError, PassManager

CORPUS = [p.read_text() for p in sorted((Path(__file__).parent / "corpus").glob("*.mir"))]
SMALL = "graph @g(%x: f32[B, 4]) {\n  %0 = neg(%x) : f32[B, 4]\n  %1 = unsqueeze(%0) {dim=2} : f32[B, 4, 1]\n" \
        "  return %0, %1\n}"


def test_corpus_is_valid() -> None:
    assert len(CORPUS) == 3
    for text in CORPUS:
        verify(parse(text))


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_text_fails_only_with_parse_or_verification_errors(seed: int) -> None:
    counts = run(CORPUS, seed, 150)
    assert sum(counts.values()) == 150 and counts.get("ParseError", 0) > 0
    assert counts.get("VerificationError", 0) + counts.get("ok", 0) > 0  # some variants get past the parser


@pytest.mark.parametrize("text,match", [
    (SMALL.replace("{dim=2}", "{dim=" + "[" * 5000 + "2" + "]" * 5000 + "}"), "nested deeper"),
    (SMALL.replace("f32[B, 4]) {", "f32[B, " + "(" * 20 + "4" + ")" * 20 + "]) {"), "nested deeper"),
    (SMALL.replace("f32[B, 4]) {", "f32[B, " + "(" * 3000 + "4" + ")" * 3000 + "]) {"), "longer than"),
    (SMALL.replace("f32[B, 4]) {", "f32[B, __import__]) {"), "cannot name a size"),
    (SMALL.replace("f32[B, 4]) {", "f32[B, ().__class__]) {"), "unexpected character"),
    (SMALL.replace("f32[B, 4]) {", "f32[B, 9**9**9**9]) {"), "small integer powers"),
    (SMALL.replace("(%x: f32[B, 4])", "(%x: f32[B, 4], %x: f32[4])"), "declared twice"),
    (SMALL[:40], "expected"),
], ids=["deep-attr", "deep-dim", "long-dim", "dunder", "attribute", "power", "twice", "truncated"])
def test_malformed_text_raises_parse_error(text: str, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        parse(text)
    assert check(text) == "ParseError"


@pytest.mark.parametrize("dim,why", [("-3", "negative"), ("2.5", "not an integer"), ("oo", "not finite"),
                                     ("nan", "not finite"), ("-B", "negative")])
def test_verifier_rejects_bad_dims(dim: str, why: str) -> None:
    g = Graph("g")
    d = {"-3": sympy.Integer(-3), "2.5": sympy.Float(2.5), "oo": sympy.oo, "nan": sympy.nan,
         "-B": -sympy.Symbol("B", integer=True, positive=True)}[dim]
    x = g.add_input("x", TensorType(torch.float32, [4, d]))
    g.set_outputs([x])
    with pytest.raises(VerificationError, match=f"dim 1 of %x .*{why}"):
        verify(g)
    # and in text: the parser reads it, the verifier rejects it
    if dim in ("-3", "-B"):
        with pytest.raises(VerificationError, match=why):
            verify(parse(f"graph @g(%x: f32[4, {dim}]) {{\n  return %x\n}}"))


def test_verifier_checks_outputs() -> None:
    g = parse(SMALL)
    g.set_outputs([])
    with pytest.raises(VerificationError, match="has no outputs"):
        verify(g)
    g = parse(SMALL)
    g.outputs = [g.outputs[0], "x"]  # type: ignore[list-item]
    with pytest.raises(VerificationError, match="output 1 is str"):
        verify(g)
    g = parse(SMALL)
    g.set_outputs([g.outputs[0], g.outputs[0]])  # the same value twice is legal (documented in verify)
    verify(g)


def _drop_last_output(graph: Graph, ctx: object) -> bool:
    graph.set_outputs(graph.outputs[:-1])
    return True


def _duplicate_output(graph: Graph, ctx: object) -> bool:
    graph.set_outputs(graph.outputs + [graph.outputs[0]])
    return True


def _retype_output(graph: Graph, ctx: object) -> bool:
    graph.set_outputs([graph.outputs[0], graph.outputs[0]])  # [B, 4, 1] replaced by [B, 4]
    return True


@pytest.mark.parametrize("bad", [_drop_last_output, _duplicate_output, _retype_output])
def test_a_pass_that_drops_or_duplicates_outputs_is_caught(bad: object) -> None:
    with pytest.raises(PassError, match="changed the graph's outputs"):
        PassManager([bad]).run(parse(SMALL))  # type: ignore[list-item]


def test_a_pass_that_empties_the_outputs_is_caught() -> None:
    def empty(graph: Graph, ctx: object) -> bool:
        graph.set_outputs([])
        return True

    with pytest.raises(PassError, match="no outputs"):
        PassManager([empty]).run(parse(SMALL))  # type: ignore[list-item]
