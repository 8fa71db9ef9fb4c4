"""common-subexpression-elimination: IR before/after, numerics, unmatched graphs unchanged."""

from __future__ import annotations

import pytest
from pass_testing import check_numerics, check_rewrite, check_unchanged

from membound.passes import get_pass

CSE = get_pass("common-subexpression-elimination")

CASES = [
    (  # two identical unary nodes become one
        """graph @f(%x: f32[B, 8]) {
          %0 = exp(%x) : f32[B, 8]
          %1 = exp(%x) : f32[B, 8]
          %2 = add(%0, %1) : f32[B, 8]
          return %2
        }""",
        """graph @f(%x: f32[B, 8]) {
          %0 = exp(%x) : f32[B, 8]
          %2 = add(%0, %0) : f32[B, 8]
          return %2
        }""",
    ),
    (  # merging cascades: once the inputs are merged, their users are identical too
        """graph @f(%x: f32[B, 8]) params(%w: f32[4, 8]) {
          %0 = linear(%x, %w) : f32[B, 4]
          %1 = linear(%x, %w) : f32[B, 4]
          %2 = relu(%0) : f32[B, 4]
          %3 = relu(%1) : f32[B, 4]
          return %2, %3
        }""",
        """graph @f(%x: f32[B, 8]) params(%w: f32[4, 8]) {
          %0 = linear(%x, %w) : f32[B, 4]
          %2 = relu(%0) : f32[B, 4]
          return %2, %2
        }""",
    ),
    (  # equal constants (no inputs) merge; equal attrs are required
        """graph @f(%x: f32[B, 8]) {
          %0 = constant() {value=0.5, dtype=f32} : f32[]
          %1 = constant() {value=0.5, dtype=f32} : f32[]
          %2 = mul(%x, %0) : f32[B, 8]
          %3 = add(%2, %1) : f32[B, 8]
          return %3
        }""",
        """graph @f(%x: f32[B, 8]) {
          %0 = constant() {value=0.5, dtype=f32} : f32[]
          %2 = mul(%x, %0) : f32[B, 8]
          %3 = add(%2, %0) : f32[B, 8]
          return %3
        }""",
    ),
    (  # multi-result nodes merge result by result
        """graph @f(%x: f32[B, 8]) {
          %v, %i = topk(%x) {k=3} : f32[B, 3], i64[B, 3]
          %w, %j = topk(%x) {k=3} : f32[B, 3], i64[B, 3]
          %a = add(%v, %w) : f32[B, 3]
          %b = add(%i, %j) : i64[B, 3]
          return %a, %b
        }""",
        """graph @f(%x: f32[B, 8]) {
          %v, %i = topk(%x) {k=3} : f32[B, 3], i64[B, 3]
          %a = add(%v, %v) : f32[B, 3]
          %b = add(%i, %i) : i64[B, 3]
          return %a, %b
        }""",
    ),
]


@pytest.mark.parametrize("before,expected", CASES)
def test_ir(before: str, expected: str) -> None:
    check_rewrite(CSE, before, expected)


@pytest.mark.parametrize("before", [c[0] for c in CASES])
def test_numerics(before: str) -> None:
    check_numerics(CSE, before)


UNCHANGED = [
    # different attrs: softmax over different dims
    """graph @f(%x: f32[B, 8]) {
      %0 = softmax(%x) {dim=0} : f32[B, 8]
      %1 = softmax(%x) {dim=1} : f32[B, 8]
      %2 = add(%0, %1) : f32[B, 8]
      return %2
    }""",
    # operand order matters (CSE does not reorder commutative operands)
    """graph @f(%x: f32[B, 8], %y: f32[B, 8]) {
      %0 = sub(%x, %y) : f32[B, 8]
      %1 = sub(%y, %x) : f32[B, 8]
      %2 = mul(%0, %1) : f32[B, 8]
      return %2
    }""",
    # 0.0 and -0.0 are different constants, though Python says they are equal
    """graph @f(%x: f32[B, 8]) {
      %0 = constant() {value=0.0, dtype=f32} : f32[]
      %1 = constant() {value=-0.0, dtype=f32} : f32[]
      %2 = add(%x, %0) : f32[B, 8]
      %3 = add(%2, %1) : f32[B, 8]
      return %3
    }""",
    # side-effecting nodes are never merged
    """graph @f(%k: f32[B, 2, S, 4], %pos: i64[S]) state(%cache: f32[B, 2, T, 4]) {
      %0 = cache_write(%cache, %k, %pos) : f32[B, 2, T, 4]
      %1 = cache_write(%cache, %k, %pos) : f32[B, 2, T, 4]
      return %0, %1
    }""",
]


@pytest.mark.parametrize("text", UNCHANGED)
def test_unchanged(text: str) -> None:
    check_unchanged(CSE, text)
