"""dead-code-elimination: IR before/after, numerics, unmatched graphs unchanged."""

from __future__ import annotations

import pytest
from pass_testing import check_numerics, check_rewrite, check_unchanged, parse_with_params

from membound.passes import PassContext, get_pass

DCE = get_pass("dead-code-elimination")

CASES = [
    (  # an unused node goes
        """graph @f(%x: f32[B, 8]) {
          %0 = exp(%x) : f32[B, 8]
          %1 = relu(%x) : f32[B, 8]
          return %1
        }""",
        """graph @f(%x: f32[B, 8]) {
          %1 = relu(%x) : f32[B, 8]
          return %1
        }""",
    ),
    (  # a whole dead chain goes, and the param only it read
        """graph @f(%x: f32[B, 8]) params(%w: f32[4, 8], %v: f32[8]) {
          %0 = linear(%x, %w) : f32[B, 4]
          %1 = relu(%0) : f32[B, 4]
          %2 = mul(%x, %v) : f32[B, 8]
          return %2
        }""",
        """graph @f(%x: f32[B, 8]) params(%v: f32[8]) {
          %2 = mul(%x, %v) : f32[B, 8]
          return %2
        }""",
    ),
    (  # a multi-result node stays while any of its results is used
        """graph @f(%x: f32[B, 8]) {
          %v, %i = topk(%x) {k=2} : f32[B, 2], i64[B, 2]
          %e = exp(%v) : f32[B, 2]
          %n = neg(%x) : f32[B, 8]
          return %e
        }""",
        """graph @f(%x: f32[B, 8]) {
          %v, %i = topk(%x) {k=2} : f32[B, 2], i64[B, 2]
          %e = exp(%v) : f32[B, 2]
          return %e
        }""",
    ),
    (  # an unused param goes even when no node is dead; unused graph inputs stay (calling convention)
        """graph @f(%x: f32[B, 8], %y: f32[B, 8]) params(%w: f32[8]) {
          %0 = exp(%x) : f32[B, 8]
          return %0
        }""",
        """graph @f(%x: f32[B, 8], %y: f32[B, 8]) {
          %0 = exp(%x) : f32[B, 8]
          return %0
        }""",
    ),
]


@pytest.mark.parametrize("before,expected", CASES)
def test_ir(before: str, expected: str) -> None:
    check_rewrite(DCE, before, expected)


@pytest.mark.parametrize("before", [c[0] for c in CASES if "topk" not in c[0]])
def test_numerics(before: str) -> None:
    check_numerics(DCE, before)


def test_unused_param_tensor_is_dropped() -> None:
    g = parse_with_params(CASES[1][0])
    assert DCE(g, PassContext()) and set(g.tensors) == {"v"}


UNCHANGED = [
    # everything is used
    """graph @f(%x: f32[B, 8]) params(%w: f32[4, 8]) {
      %0 = linear(%x, %w) : f32[B, 4]
      %1 = relu(%0) : f32[B, 4]
      return %1, %0
    }""",
    # a node with side effects stays although nothing reads its result
    """graph @f(%k: f32[B, 2, S, 4], %pos: i64[S]) state(%cache: f32[B, 2, T, 4]) {
      %0 = cache_write(%cache, %k, %pos) : f32[B, 2, T, 4]
      %1 = neg(%k) : f32[B, 2, S, 4]
      return %1
    }""",
]


@pytest.mark.parametrize("text", UNCHANGED)
def test_unchanged(text: str) -> None:
    check_unchanged(DCE, text)
