"""constant-fold: IR before/after, numerics, unmatched graphs unchanged, options and limits."""

from __future__ import annotations

import pytest
import torch
from pass_testing import check_numerics, check_rewrite, check_unchanged, parse_with_params

from membound.passes import PassContext, get_pass
from membound.passes.constant_fold import ConstantFold

FOLD = get_pass("constant-fold")

CASES = [
    (  # a 0-d computation on constants becomes one constant node
        """graph @f(%x: f32[B, 4]) {
          %0 = constant() {value=2.0, dtype=f32} : f32[]
          %1 = constant() {value=3.0, dtype=f32} : f32[]
          %2 = mul(%0, %1) : f32[]
          %3 = mul(%x, %2) : f32[B, 4]
          return %3
        }""",
        """graph @f(%x: f32[B, 4]) {
          %c = constant() {value=6.0, dtype=f32} : f32[]
          %3 = mul(%x, %c) : f32[B, 4]
          return %3
        }""",
    ),
    (  # a small non-uniform static tensor becomes the param const.0 (arange itself is already canonical)
        """graph @f(%x: f32[B, 4]) {
          %0 = arange() {start=0, end=4, dtype=f32} : f32[4]
          %1 = constant() {value=0.5, dtype=f32} : f32[]
          %2 = mul(%0, %1) : f32[4]
          %3 = add(%x, %2) : f32[B, 4]
          return %3
        }""",
        """graph @f(%x: f32[B, 4]) params(%const.0: f32[4]) {
          %3 = add(%x, %const.0) : f32[B, 4]
          return %3
        }""",
    ),
    (  # a uniform result becomes a full node, not a param
        """graph @f(%x: f32[B, 3]) {
          %0 = full() {shape=[2, 3], value=2.0, dtype=f32} : f32[2, 3]
          %1 = exp(%0) : f32[2, 3]
          %2 = sum(%1) {dims=[0]} : f32[3]
          %3 = mul(%x, %2) : f32[B, 3]
          return %3
        }""",
        """graph @f(%x: f32[B, 3]) {
          %0 = full() {shape=[3], value=14.778112411499023, dtype=f32} : f32[3]
          %3 = mul(%x, %0) : f32[B, 3]
          return %3
        }""",
    ),
    (  # a chain through views and integer ops folds at once; only the value that escapes is kept
        """graph @f(%x: i64[B, 2, 3]) {
          %0 = arange() {start=0, end=6} : i64[6]
          %1 = reshape(%0) {shape=[2, 3]} : i64[2, 3]
          %2 = constant() {value=2, dtype=i64} : i64[]
          %3 = remainder(%1, %2) : i64[2, 3]
          %4 = eq(%3, %2) : bool[2, 3]
          %5 = where(%4, %x, %1) : i64[B, 2, 3]
          return %5
        }""",
        """graph @f(%x: i64[B, 2, 3]) params(%const.0: i64[2, 3]) {
          %4 = full() {shape=[2, 3], value=false, dtype=bool} : bool[2, 3]
          %5 = where(%4, %x, %const.0) : i64[B, 2, 3]
          return %5
        }""",
    ),
    (  # a folded value returned by the graph is materialised too; names avoid existing const.N
        """graph @f(%x: f32[B, 2]) params(%const.0: f32[2]) {
          %0 = arange() {start=1, end=3, dtype=f32} : f32[2]
          %1 = sqrt(%0) : f32[2]
          %2 = add(%x, %const.0) : f32[B, 2]
          return %2, %1
        }""",
        """graph @f(%x: f32[B, 2]) params(%const.0: f32[2], %const.1: f32[2]) {
          %2 = add(%x, %const.0) : f32[B, 2]
          return %2, %const.1
        }""",
    ),
]


@pytest.mark.parametrize("before,expected", CASES)
def test_ir(before: str, expected: str) -> None:
    check_rewrite(FOLD, before, expected)


@pytest.mark.parametrize("before", [c[0] for c in CASES])
def test_numerics(before: str) -> None:
    check_numerics(FOLD, before, rtol=0, atol=0)  # folding runs the same reference: bit-identical


def test_folded_tensor_values() -> None:
    g = check_rewrite(FOLD, *CASES[1])
    assert torch.equal(g.tensors["const.0"], torch.tensor([0.0, 0.5, 1.0, 1.5]))


def test_earlier_const_params_fold_further() -> None:
    # const.N params made by an earlier run are compile-time constants themselves
    g = parse_with_params("""graph @f(%x: f32[B, 3]) params(%const.0: f32[3]) {
      %0 = exp(%const.0) : f32[3]
      %1 = add(%x, %0) : f32[B, 3]
      return %1
    }""")
    g.tensors["const.0"] = torch.tensor([0.0, 1.0, 2.0])
    assert FOLD(g, PassContext()) is True
    (folded,) = [p for p in g.params if p.name != "const.0"]
    assert g.nodes[0].inputs[1] is folded
    torch.testing.assert_close(g.tensors[folded.name], torch.tensor([0.0, 1.0, 2.0]).exp())


def test_size_limit_is_an_option_and_is_logged() -> None:
    text = """graph @f(%x: f32[B, 8]) {
      %0 = arange() {start=0, end=8, dtype=f32} : f32[8]
      %1 = exp(%0) : f32[8]
      %2 = add(%x, %1) : f32[B, 8]
      return %2
    }"""
    g = parse_with_params(text)
    ctx = PassContext()
    assert ConstantFold(max_elements=4)(g, ctx) is False
    assert any("8 elements > max_elements=4" in line for line in ctx.log)
    check_numerics(ConstantFold(max_elements=8), text)


UNCHANGED = [
    # model params are never folded over, even with constant partners
    """graph @f(%x: f32[B, 4]) params(%w: f32[4]) {
      %0 = constant() {value=2.0, dtype=f32} : f32[]
      %1 = mul(%w, %0) : f32[4]
      %2 = add(%x, %1) : f32[B, 4]
      return %2
    }""",
    # symbolic shapes are not compile-time constants
    """graph @f(%x: f32[B, S]) {
      %0 = arange() {start=0, end=S, dtype=f32} : f32[S]
      %1 = exp(%0) : f32[S]
      %2 = add(%x, %1) : f32[B, S]
      return %2
    }""",
    # lone seeds are already canonical: constant, full, arange
    """graph @f(%x: f32[B, 4]) {
      %0 = constant() {value=2.0, dtype=f32} : f32[]
      %1 = full() {shape=[4], value=3.0, dtype=f32} : f32[4]
      %2 = arange() {start=0, end=4, dtype=f32} : f32[4]
      %3 = mul(%x, %0) : f32[B, 4]
      %4 = add(%3, %1) : f32[B, 4]
      %5 = sub(%4, %2) : f32[B, 4]
      return %5
    }""",
    # no constants at all
    """graph @f(%x: f32[B, 4]) {
      %0 = exp(%x) : f32[B, 4]
      return %0
    }""",
]


@pytest.mark.parametrize("text", UNCHANGED)
def test_unchanged(text: str) -> None:
    check_unchanged(FOLD, text)
