"""The one float-literal printer (IR text and generated Python) and the one numel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
import torch

from membound.ir import TensorType, parse, print_graph
from membound.ir.printer import float_literal
from membound.ir.types import B, S, numel


@pytest.mark.parametrize("v", [0.0, -0.0, 1.0, 0.1, 1e-5, -3.25e30, 2.0 ** -149, math.inf, -math.inf, math.nan])
def test_float_literal_reads_back(v: float) -> None:
    py = eval(float_literal(v, python=True))  # generated code: the same float
    text = (f"graph @f(%x: f32[4]) {{\n  %c = constant() {{value={float_literal(v)}, dtype=f32}} : f32[]\n"
            f"  %0 = add(%x, %c) : f32[4]\n  return %0\n}}\n")
    got = parse(text).nodes[0].attrs["value"]  # IR text: the parser reads the same float back
    for x in (py, got):
        assert isinstance(x, float)
        assert (math.isnan(x) and math.isnan(v)) or (x == v and math.copysign(1, x) == math.copysign(1, v))
    assert print_graph(parse(text)) == text


def test_float_literal_of_numpy_scalars_is_plain() -> None:
    assert float_literal(np.float64(0.5), python=True) == "0.5"  # not "np.float64(0.5)"


def test_numel() -> None:
    assert numel(()) == 1
    assert numel((B, S, 4)) == 4 * B * S
    assert TensorType(torch.float32, (B, 3)).numel() == numel((B, sympy.Integer(3)))
