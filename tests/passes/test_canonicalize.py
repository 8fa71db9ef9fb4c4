"""canonicalize (views, casts, algebraic identities, matmul forms): IR before/after, numerics, unchanged.

rms_norm recognition has its own file, test_canonicalize_rms_norm.py.
"""

from __future__ import annotations

import pytest
from pass_testing import check_numerics, check_rewrite, check_unchanged

from membound.passes import get_pass

CANON = get_pass("canonicalize")

CASES = {
    # reshape(reshape(x)) -> one reshape of x
    "reshape-reshape": (
        """graph @f(%x: f32[B, 6, 4]) {
          %0 = reshape(%x) {shape=[B, 24]} : f32[B, 24]
          %1 = reshape(%0) {shape=[B, 2, 12]} : f32[B, 2, 12]
          return %1
        }""",
        """graph @f(%x: f32[B, 6, 4]) {
          %1 = reshape(%x) {shape=[B, 2, 12]} : f32[B, 2, 12]
          return %1
        }"""),
    # a reshape chain that comes back to x's shape disappears
    "reshape-round-trip": (
        """graph @f(%x: f32[B, S, 8]) {
          %0 = reshape(%x) {shape=[B, S, 2, 4]} : f32[B, S, 2, 4]
          %1 = reshape(%0) {shape=[B, S, 8]} : f32[B, S, 8]
          %2 = exp(%1) : f32[B, S, 8]
          return %2
        }""",
        """graph @f(%x: f32[B, S, 8]) {
          %2 = exp(%x) : f32[B, S, 8]
          return %2
        }"""),
    # reshape of an unsqueeze: one reshape (both keep the row-major order)
    "reshape-unsqueeze": (
        """graph @f(%x: f32[B, 8]) {
          %0 = unsqueeze(%x) {dim=1} : f32[B, 1, 8]
          %1 = reshape(%0) {shape=[B, 2, 4]} : f32[B, 2, 4]
          return %1
        }""",
        """graph @f(%x: f32[B, 8]) {
          %1 = reshape(%x) {shape=[B, 2, 4]} : f32[B, 2, 4]
          return %1
        }"""),
    # views to x's own shape (symbolic dims compared symbolically) are x
    "identity-views": (
        """graph @f(%x: f32[B, S, 8]) {
          %0 = reshape(%x) {shape=[B, S, 8]} : f32[B, S, 8]
          %1 = expand(%0) {shape=[B, S, 8]} : f32[B, S, 8]
          %2 = slice(%1) {dim=1, start=0, end=S} : f32[B, S, 8]
          %3 = squeeze(%2) {dims=[]} : f32[B, S, 8]
          %4 = permute(%3) {dims=[0, 1, 2]} : f32[B, S, 8]
          %5 = transpose(%4) {dim0=-1, dim1=2} : f32[B, S, 8]
          %6 = cat(%5) {dim=0} : f32[B, S, 8]
          %7 = neg(%6) : f32[B, S, 8]
          return %7
        }""",
        """graph @f(%x: f32[B, S, 8]) {
          %7 = neg(%x) : f32[B, S, 8]
          return %7
        }"""),
    # transpose(transpose(x)) with the same pair (either order) is x
    "transpose-transpose": (
        """graph @f(%x: f32[B, S, 8]) {
          %0 = transpose(%x) {dim0=1, dim1=2} : f32[B, 8, S]
          %1 = transpose(%0) {dim0=-1, dim1=-2} : f32[B, S, 8]
          return %1
        }""",
        """graph @f(%x: f32[B, S, 8]) {
          return %x
        }"""),
    # permute(permute(x)) composes into one permute
    "permute-permute": (
        """graph @f(%x: f32[B, S, 4, 8]) {
          %0 = permute(%x) {dims=[0, 2, 1, 3]} : f32[B, 4, S, 8]
          %1 = permute(%0) {dims=[0, 1, 3, 2]} : f32[B, 4, 8, S]
          return %1
        }""",
        """graph @f(%x: f32[B, S, 4, 8]) {
          %1 = permute(%x) {dims=[0, 2, 3, 1]} : f32[B, 4, 8, S]
          return %1
        }"""),
    # a transpose after a permute is a permute too
    "transpose-permute": (
        """graph @f(%x: f32[B, S, 4, 8]) {
          %0 = permute(%x) {dims=[0, 2, 1, 3]} : f32[B, 4, S, 8]
          %1 = transpose(%0) {dim0=2, dim1=3} : f32[B, 4, 8, S]
          return %1
        }""",
        """graph @f(%x: f32[B, S, 4, 8]) {
          %1 = permute(%x) {dims=[0, 2, 3, 1]} : f32[B, 4, 8, S]
          return %1
        }"""),
    # a permute and a transpose that cancel leave only the last transpose, on x
    "permute-transpose-cancel": (
        """graph @f(%x: f32[B, S, 4, 8]) {
          %0 = permute(%x) {dims=[0, 2, 1, 3]} : f32[B, 4, S, 8]
          %1 = transpose(%0) {dim0=1, dim1=2} : f32[B, S, 4, 8]
          %2 = transpose(%1) {dim0=2, dim1=3} : f32[B, S, 8, 4]
          return %2
        }""",
        """graph @f(%x: f32[B, S, 4, 8]) {
          %2 = transpose(%x) {dim0=2, dim1=3} : f32[B, S, 8, 4]
          return %2
        }"""),
    # unsqueeze(squeeze(x)) and squeeze(unsqueeze(x)) that restore the shape are x
    "squeeze-unsqueeze": (
        """graph @f(%x: f32[B, 1, 8]) {
          %0 = squeeze(%x) {dims=[1]} : f32[B, 8]
          %1 = unsqueeze(%0) {dim=1} : f32[B, 1, 8]
          %2 = unsqueeze(%1) {dim=0} : f32[1, B, 1, 8]
          %3 = squeeze(%2) {dims=[0]} : f32[B, 1, 8]
          return %3
        }""",
        """graph @f(%x: f32[B, 1, 8]) {
          return %x
        }"""),
    # a cast to x's own dtype is x; a lossless round trip bf16 -> f32 -> bf16 is x
    "casts": (
        """graph @f(%x: f32[B, 8], %y: bf16[B, 8]) {
          %0 = cast(%x) {dtype=f32} : f32[B, 8]
          %1 = cast(%y) {dtype=f32} : f32[B, 8]
          %2 = cast(%1) {dtype=bf16} : bf16[B, 8]
          %3 = exp(%0) : f32[B, 8]
          return %3, %2
        }""",
        """graph @f(%x: f32[B, 8], %y: bf16[B, 8]) {
          %3 = exp(%x) : f32[B, 8]
          return %3, %y
        }"""),
    # x * 1, 1 * x, x + 0, 0 + x, x - 0, x / 1 are x
    "identities": (
        """graph @f(%x: f32[B, 8]) {
          %one = constant() {value=1.0, dtype=f32} : f32[]
          %zero = constant() {value=0, dtype=f32} : f32[]
          %0 = mul(%x, %one) : f32[B, 8]
          %1 = mul(%one, %0) : f32[B, 8]
          %2 = add(%1, %zero) : f32[B, 8]
          %3 = add(%zero, %2) : f32[B, 8]
          %4 = sub(%3, %zero) : f32[B, 8]
          %5 = div(%4, %one) : f32[B, 8]
          %6 = exp(%5) : f32[B, 8]
          return %6
        }""",
        """graph @f(%x: f32[B, 8]) {
          %6 = exp(%x) : f32[B, 8]
          return %6
        }"""),
    # and-ing with true and or-ing with false leave a bool mask alone (HF builds masks like this)
    "mask-identities": (
        """graph @f(%m: bool[B, 1, S, S]) {
          %t = constant() {value=true, dtype=bool} : bool[]
          %f = full() {shape=[S], value=false, dtype=bool} : bool[S]
          %0 = logical_and(%t, %m) : bool[B, 1, S, S]
          %1 = logical_or(%0, %f) : bool[B, 1, S, S]
          %2 = logical_not(%1) : bool[B, 1, S, S]
          return %2
        }""",
        """graph @f(%m: bool[B, 1, S, S]) {
          %2 = logical_not(%m) : bool[B, 1, S, S]
          return %2
        }"""),
    # multiplying by a full of ones that broadcasts into x is x
    "mul-full-ones": (
        """graph @f(%x: f32[B, 8]) {
          %one = full() {shape=[8], value=1.0, dtype=f32} : f32[8]
          %0 = mul(%x, %one) : f32[B, 8]
          return %0
        }""",
        """graph @f(%x: f32[B, 8]) {
          return %x
        }"""),
    # matmul(x, w^T) with a 2-D param w is linear(x, w)
    "matmul-transpose-to-linear": (
        """graph @f(%x: f32[B, S, 8]) params(%w: f32[4, 8]) {
          %0 = transpose(%w) {dim0=-1, dim1=-2} : f32[8, 4]
          %1 = matmul(%x, %0) : f32[B, S, 4]
          return %1
        }""",
        """graph @f(%x: f32[B, S, 8]) params(%w: f32[4, 8]) {
          %1 = linear(%x, %w) : f32[B, S, 4]
          return %1
        }"""),
    # the permute spelling of w^T too
    "matmul-permute-to-linear": (
        """graph @f(%x: f32[B, 8]) params(%w: f32[4, 8]) {
          %0 = permute(%w) {dims=[1, 0]} : f32[8, 4]
          %1 = matmul(%x, %0) : f32[B, 4]
          return %1
        }""",
        """graph @f(%x: f32[B, 8]) params(%w: f32[4, 8]) {
          %1 = linear(%x, %w) : f32[B, 4]
          return %1
        }"""),
    # add(linear(x, w), b[N]) in either order is linear(x, w, b); from matmul it takes two steps
    "bias-into-linear": (
        """graph @f(%x: f32[B, S, 8]) params(%w: f32[4, 8], %b: f32[4], %w2: f32[3, 4], %b2: f32[3]) {
          %0 = linear(%x, %w) : f32[B, S, 4]
          %1 = add(%0, %b) : f32[B, S, 4]
          %2 = transpose(%w2) {dim0=0, dim1=1} : f32[4, 3]
          %3 = matmul(%1, %2) : f32[B, S, 3]
          %4 = add(%b2, %3) : f32[B, S, 3]
          return %4
        }""",
        """graph @f(%x: f32[B, S, 8]) params(%w: f32[4, 8], %b: f32[4], %w2: f32[3, 4], %b2: f32[3]) {
          %1 = linear(%x, %w, %b) : f32[B, S, 4]
          %4 = linear(%1, %w2, %b2) : f32[B, S, 3]
          return %4
        }"""),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ir(case: str) -> None:
    check_rewrite(CANON, *CASES[case])


@pytest.mark.parametrize("sizes", [{"B": 3, "S": 5}, {"B": 1, "S": 1}], ids=["B3-S5", "B1-S1"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_numerics(case: str, sizes: dict[str, int]) -> None:
    check_numerics(CANON, CASES[case][0], bindings=sizes)


UNCHANGED = {
    # matmul(x, w) with a 2-D param w stays matmul (only the transposed form is a linear)
    "matmul-param": """graph @f(%x: f32[B, 8]) params(%w: f32[8, 4]) {
      %0 = matmul(%x, %w) : f32[B, 4]
      return %0
    }""",
    # the transposed operand is an activation, not a param: stays matmul
    "matmul-activation": """graph @f(%x: f32[B, S, 8], %y: f32[8, 4]) {
      %0 = transpose(%y) {dim0=0, dim1=1} : f32[4, 8]
      %1 = transpose(%x) {dim0=1, dim1=2} : f32[B, 8, S]
      %2 = matmul(%1, %0) : f32[B, 8, 8]
      return %2
    }""",
    # mul(x, x) stays (not rewritten to pow); x * 2 and x + 1 are not identities
    "non-identities": """graph @f(%x: f32[B, 8]) {
      %two = constant() {value=2.0, dtype=f32} : f32[]
      %one = constant() {value=1.0, dtype=f32} : f32[]
      %0 = mul(%x, %x) : f32[B, 8]
      %1 = mul(%0, %two) : f32[B, 8]
      %2 = add(%1, %one) : f32[B, 8]
      %3 = sub(%one, %2) : f32[B, 8]
      return %3
    }""",
    # and-ing a float with true gives a bool, not x
    "and-true-float": """graph @f(%x: f32[B, 8]) {
      %t = constant() {value=true, dtype=bool} : bool[]
      %0 = logical_and(%x, %t) : bool[B, 8]
      %1 = logical_or(%0, %t) : bool[B, 8]
      return %1
    }""",
    # x * 1.0 with an integer x promotes to float: the type changes, so it stays
    "mul-one-promotes": """graph @f(%x: i64[B, 8]) {
      %one = constant() {value=1.0, dtype=f32} : f32[]
      %0 = mul(%x, %one) : f32[B, 8]
      return %0
    }""",
    # x + zeros that broadcast x to a bigger shape is not x
    "add-zeros-broadcasts": """graph @f(%x: f32[B, 1]) {
      %z = full() {shape=[4], value=0.0, dtype=f32} : f32[4]
      %0 = add(%x, %z) : f32[B, 4]
      return %0
    }""",
    # floor division by 1 is not the identity on floats
    "floor-div-one": """graph @f(%x: f32[B, 8]) {
      %one = constant() {value=1.0, dtype=f32} : f32[]
      %0 = div(%x, %one) {rounding_mode="floor"} : f32[B, 8]
      return %0
    }""",
    # real views: a different shape, a partial slice, a strided full-length slice of size 1 dims only
    "real-views": """graph @f(%x: f32[B, S, 8]) {
      %0 = reshape(%x) {shape=[B, S, 2, 4]} : f32[B, S, 2, 4]
      %1 = slice(%x) {dim=2, start=1, end=8} : f32[B, S, 7]
      %2 = transpose(%x) {dim0=1, dim1=2} : f32[B, 8, S]
      %3 = expand(%x) {shape=[2, B, S, 8]} : f32[2, B, S, 8]
      %4 = unsqueeze(%x) {dim=0} : f32[1, B, S, 8]
      %5 = unsqueeze(%4) {dim=0} : f32[1, 1, B, S, 8]
      return %0, %1, %2, %3, %5
    }""",
    # a narrowing round trip f32 -> bf16 -> f32 rounds: it stays
    "lossy-cast-round-trip": """graph @f(%x: f32[B, 8]) {
      %0 = cast(%x) {dtype=bf16} : bf16[B, 8]
      %1 = cast(%0) {dtype=f32} : f32[B, 8]
      return %1
    }""",
    # the linear feeds another user too: folding the bias would compute the matmul twice
    "bias-linear-shared": """graph @f(%x: f32[B, 8]) params(%w: f32[4, 8], %b: f32[4]) {
      %0 = linear(%x, %w) : f32[B, 4]
      %1 = add(%0, %b) : f32[B, 4]
      %2 = relu(%0) : f32[B, 4]
      return %1, %2
    }""",
    # adding a [B, N] tensor is not a bias
    "bias-not-1d": """graph @f(%x: f32[B, 8], %r: f32[B, 4]) params(%w: f32[4, 8]) {
      %0 = linear(%x, %w) : f32[B, 4]
      %1 = add(%0, %r) : f32[B, 4]
      return %1
    }""",
}


@pytest.mark.parametrize("case", sorted(UNCHANGED))
def test_unchanged(case: str) -> None:
    check_unchanged(CANON, UNCHANGED[case])
