"""An exact per-op cost table: FLOPs and bytes of every registered op at one concrete shape.

The shape is each op's first OpInfo sample in ``tests/ir/test_ops.py`` (sizes B=3, S=5); the figures
are written out below as literals, checked in and never regenerated: a cost rule that changes
(FLOPs and bytes swapped in rms_norm, a missing read of the weight...) fails here and must be
justified by editing the row by hand. Spot-checked by hand: abs, add, amax, rms_norm, linear, embedding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ir"))
from test_ops import SAMPLES, build  # noqa: E402

from membound.ir.ops import all_ops, get_op  # noqa: E402

# ops without an OpInfo sample in test_ops (their own test files cover them), and why
SKIPPED = {
    "cache_write": "state op; tests/ir/test_kv_cache_ops.py",
    "cached_attention": "KV-cache op; tests/ir/test_kv_cache_ops.py",
    "attention_block": "KV-cache op: test_attention_block_costs_by_hand below",
    "linear_attention_state": "state op: test_linear_attention_state_costs_by_hand below",
    "mlp_block": "decode block op: test_mlp_block_costs_by_hand below",
    "state_copy": "state op; tests/ir/test_kv_cache_ops.py",
    "moe": "MoE op family: its own tests",
    "quant_moe": "MoE op family: tests/ir/test_moe_op.py",
    "moe_experts": "MoE op family: tests/ir/test_moe_op.py",
    "quant_moe_experts": "MoE op family: tests/ir/test_moe_op.py",
    "quant_linear": "quant op family: its own tests",
    "quant_gated_linear": "quant op family: its own tests",
    "torch_call": "result types and cost come from the capture",
    "rms_norm_linear": "fused GEMV family: test_fused_gemv_costs_by_hand below",
    "linear_add": "fused GEMV family: test_fused_gemv_costs_by_hand below",
    "gated_linear_add": "fused GEMV family: test_fused_gemv_costs_by_hand below",
    "rms_norm_linear_sumsq": "fused GEMV family: test_fused_gemv_costs_by_hand below",
    "rms_norm_linear_rope_sumsq": "fused GEMV family: test_fused_gemv_costs_by_hand below",
    "rms_norm_linear_glu_sumsq": "fused GEMV family: test_fused_gemv_costs_by_hand below",
    "linear_add_sumsq": "fused GEMV family: test_fused_gemv_costs_by_hand below",
    "gated_linear_add_sumsq": "fused GEMV family: test_fused_gemv_costs_by_hand below",
}

# op: (the sample, FLOPs, bytes)
COST: dict[str, tuple[str, int, int]] = {
    'abs': ('abs(float32[7]){}', 7, 56),
    'add': ('add(float32[4,5],float32[4,5]){}', 20, 240),
    'amax': ('amax(float32[3,4,5]){dims=(1,)}', 60, 300),
    'amin': ('amin(float32[3,4,5]){dims=(1,)}', 60, 300),
    'arange': ('arange(){end=7}', 0, 56),
    'argmax': ('argmax(float32[4,7]){dim=1}', 28, 144),
    'attention': ('attention(float32[2,4,5,8],float32[2,2,7,8],float32[2,2,7,8]){}', 8960, 4352),
    'bitwise_and': ('bitwise_and(int64[4,5],int64[4,5]){}', 20, 480),
    'bitwise_not': ('bitwise_not(bool[7]){}', 7, 14),
    'bitwise_or': ('bitwise_or(int64[4,5],int64[4,5]){}', 20, 480),
    'cast': ('cast(float32[3,1,4]){dtype=torch.float16}', 12, 72),
    'cat': ('cat(float32[2,3],float32[4,3]){dim=0}', 0, 144),
    'clamp': ('clamp(float32[4,5]){min=-0.5,max=0.5}', 40, 160),
    'constant': ('constant(){value=0.5,dtype=torch.float32}', 0, 4),
    'cos': ('cos(float32[7]){}', 28, 56),
    'cumsum': ('cumsum(float32[3,7]){dim=1}', 21, 168),
    'linear_scan': ('linear_scan(float32[2,5,3],float32[2,5,3]){dim=1}', 60, 360),
    'linear_attention': ('linear_attention(float32[2,5,3,4],float32[2,5,3],float32[2,5,3,4],float32[2,5,3,6],float32[2,5,3]){dim=1,delta=True}', 5040, 3216),
    'div': ('div(float32[4,5],float32[4,5]){}', 20, 240),
    'embedding': ('embedding(float32[11,4],int64[2,3]){}', 0, 240),
    'eq': ('eq(float32[4,5],float32[4,5]){}', 20, 180),
    'erf': ('erf(float32[7]){}', 28, 56),
    'exp': ('exp(float32[7]){}', 28, 56),
    'expm1': ('expm1(float32[7]){}', 28, 56),
    'log1p': ('log1p(float32[7]){}', 28, 56),
    'expand': ('expand(float32[3,1]){shape=(2,3,4)}', 0, 0),
    'floor': ('floor(float32[7]){}', 7, 56),
    'full': ('full(){shape=(2,3),value=1.5,dtype=torch.float32}', 0, 24),
    'gated_linear': ('gated_linear(float32[7,5],float32[7,5],float32[3,5]){}', 385, 424),
    'linear_glu': ('linear_glu(float32[7,5],float32[6,5]){}', 525, 344),
    # by hand: 2*3*12*5 = 360 for the product, 3 a rotated element (3 rows x 8 columns: 72); x 15, weight 60,
    # cos 12, sin 12 and the output 36 values of 4 bytes
    'linear_rope': ('linear_rope(float32[3,5],float32[12,5],float32[3,4],float32[3,4]){head_dim=4,rope_cols=8}', 432,
                    540),
    'gather': ('gather(float32[4,5],int64[4,3]){dim=1}', 0, 192),
    'ge': ('ge(float32[4,5],float32[4,5]){}', 20, 180),
    'gelu': ('gelu(float32[3,1,5]){}', 120, 120),
    'softplus': ('softplus(float32[3,1,5]){}', 120, 120),
    'grouped_mm': ('grouped_mm(float32[7,4],float32[3,4,5],int64[3]){}', 280, 516),
    'gt': ('gt(float32[4,5],float32[4,5]){}', 20, 180),
    'histc': ('histc(float32[50]){bins=4,min=0,max=3}', 50, 216),
    'index': ('index(float32[5,6,7],int64[3]){dims=(0,)}', 0, 1032),
    'index_copy': ('index_copy(float32[5,4],int64[3],float32[3,4]){dim=0}', 0, 232),
    'index_put': ('index_put(float32[5,4],float32[3,4],int64[3]){dims=(0,)}', 0, 232),
    'index_select': ('index_select(float32[5,4],int64[3]){dim=0}', 0, 120),
    'layer_norm': ('layer_norm(float32[3,7],float32[7],float32[7]){}', 105, 224),
    'le': ('le(float32[4,5],float32[4,5]){}', 20, 180),
    'linear': ('linear(float32[7,5],float32[3,5]){}', 210, 284),
    'log': ('log(float32[7]){}', 28, 56),
    'log_softmax': ('log_softmax(float32[3,7]){dim=-1}', 105, 168),
    'logical_and': ('logical_and(float32[4,5],float32[4,5]){}', 20, 180),
    'logical_not': ('logical_not(bool[7]){}', 7, 14),
    'logical_or': ('logical_or(float32[4,5],float32[4,5]){}', 20, 180),
    'lt': ('lt(float32[4,5],float32[4,5]){}', 20, 180),
    'matmul': ('matmul(float32[3,4],float32[4,5]){}', 120, 188),
    'maximum': ('maximum(float32[4,5],float32[4,5]){}', 20, 240),
    'mean': ('mean(float32[3,4,5]){dims=(1,)}', 60, 300),
    'minimum': ('minimum(float32[4,5],float32[4,5]){}', 20, 240),
    'mul': ('mul(float32[4,5],float32[4,5]){}', 20, 240),
    'ne': ('ne(float32[4,5],float32[4,5]){}', 20, 180),
    'neg': ('neg(float32[7]){}', 7, 56),
    'permute': ('permute(float32[2,3,4]){dims=(2,0,1)}', 0, 0),
    'pow': ('pow(float32[4,5],float32[4,5]){}', 80, 240),
    'reciprocal': ('reciprocal(float32[7]){}', 7, 56),
    'relu': ('relu(float32[7]){}', 7, 56),
    'remainder': ('remainder(float32[4,5],float32[4,5]){}', 40, 240),
    'reshape': ('reshape(float32[2,3,4]){shape=(6,4)}', 0, 0),
    'rms_norm': ('rms_norm(float32[3,7],float32[7]){eps=1e-06}', 105, 196),
    'rsqrt': ('rsqrt(float32[7]){}', 28, 56),
    'scatter': ('scatter(float32[5,4],int64[3,4],float32[3,4]){dim=0}', 0, 304),
    'select': ('select(float32[4,5]){dim=1,index=3}', 0, 0),
    'sigmoid': ('sigmoid(float32[7]){}', 28, 56),
    'silu': ('silu(float32[7]){}', 28, 56),
    'sin': ('sin(float32[7]){}', 28, 56),
    'slice': ('slice(float32[7,5]){dim=0,start=1,end=6,step=2}', 0, 0),
    'softmax': ('softmax(float32[3,7]){dim=-1}', 105, 168),
    'sort': ('sort(float32[4,9]){}', 180, 576),
    'split': ('split(float32[7,3]){dim=0,sizes=(2,5)}', 0, 0),
    'sqrt': ('sqrt(float32[7]){}', 28, 56),
    'squeeze': ('squeeze(float32[3,1,4,1]){dims=(1,3)}', 0, 0),
    'sub': ('sub(float32[4,5],float32[4,5]){}', 20, 240),
    'sum': ('sum(float32[3,4,5]){dims=(1,)}', 60, 300),
    'tanh': ('tanh(float32[7]){}', 28, 56),
    'topk': ('topk(float32[4,9]){k=3}', 72, 288),
    'transpose': ('transpose(float32[2,3,4]){dim0=0,dim1=2}', 0, 0),
    'unsqueeze': ('unsqueeze(float32[3,4]){dim=0}', 0, 0),
    'where': ('where(bool[4,5],float32[4,5],float32[4,5]){}', 20, 260),
}


def _first_samples() -> dict[str, object]:
    out: dict[str, object] = {}
    for s in SAMPLES:
        out.setdefault(s.op, s)
    return out


@pytest.mark.parametrize("op", sorted(COST))
def test_cost_of_each_op_is_exactly_the_table(op: str) -> None:
    sample = _first_samples()[op]
    sig, flops, nbytes = COST[op]
    assert str(sample) == sig, f"{op}: the first sample changed ({sample}); update the row by hand"
    _, node = build(sample)  # type: ignore[arg-type]
    f, b = get_op(op).cost([v.type for v in node.inputs], [r.type for r in node.results], node.attrs)
    got = (int(f.subs(sample.sizes)), int(b.subs(sample.sizes)))  # type: ignore[attr-defined]
    assert got == (flops, nbytes), f"{op} at {sig}: (FLOPs, bytes) = {got}, the table says {(flops, nbytes)}"


def test_every_registered_op_is_in_the_table_or_skipped_with_a_reason() -> None:
    names = set(all_ops())
    assert names - set(COST) - set(SKIPPED) == set(), "ops with no cost row: add one (by hand) or a skip reason"
    assert set(COST) | set(SKIPPED) <= names


def test_fused_gemv_costs_by_hand() -> None:
    """x f32[7, 5], weight [3, 5]: the GEMV is 2*7*3*5 = 210 FLOPs; the norm 5 a element of x (175); the
    residual add one an output element (21); bytes are every operand and the output once, 4 bytes each,
    plus what every GEMV program re-reads for a norm: 7 rows (at 7 rows one tensor-core program of 32
    columns; at 1 row one program per 4 columns) of x (the prologue) or of its partial sums of squares
    (the statistics form: one fp32 per 4 columns of x, 2 for K = 5). The producer's partials: a square
    and an add per output element, one fp32 per 4 output columns written (7 x 1)."""
    import torch

    from membound.ir import TensorType

    def cost(op: str, shapes: list[list[int]], out: list[int], **attrs: object) -> tuple[int, int]:
        f, b = get_op(op).cost([TensorType(torch.float32, s) for s in shapes], [TensorType(torch.float32, out)],
                               attrs)
        return int(f), int(b)

    assert cost("linear_add", [[7, 5], [3, 5], [7, 3]], [7, 3]) == (210 + 21, 4 * (35 + 15 + 21 + 21))
    assert cost("rms_norm_linear", [[7, 5], [5], [3, 5]], [7, 3], eps=1e-6) == (
        210 + 175, 4 * (35 + 5 + 15 + 21) + 7 * 1 * 4 * 5)
    assert cost("rms_norm_linear", [[1, 5], [5], [9, 5]], [1, 9], eps=1e-6) == (
        90 + 25, 4 * (5 + 5 + 45 + 9) + 1 * 3 * 4 * 5)   # 1 row: 3 programs of 4 columns
    assert cost("rms_norm_linear", [[17, 5], [5], [3, 5]], [17, 3], eps=1e-6)[1] == 4 * (85 + 5 + 15 + 51)  # cuBLAS
    assert cost("rms_norm_linear_sumsq", [[7, 5], [7, 2], [5], [3, 5]], [7, 3], eps=1e-6) == (
        210 + 3 * 35 + 14, 4 * (35 + 14 + 5 + 15 + 21) + 7 * 1 * 4 * 2)
    # and q / k rotated in its epilogue (head dim 2, the first 2 of the 3 columns): 3 FLOPs a rotated element (7 x 2);
    # cos and sin [7, 2] read once more
    assert cost("rms_norm_linear_rope_sumsq", [[7, 5], [7, 2], [5], [3, 5], [7, 2], [7, 2]], [7, 3], eps=1e-6,
                head_dim=2, rope_cols=2) == (210 + 3 * 35 + 14 + 3 * 14,
                                             4 * (35 + 14 + 5 + 15 + 14 + 14 + 21) + 7 * 1 * 4 * 2)
    # the merged gate/up projection with the norm from the partials: linear_glu's 2 x 7 x 6 x 5 + 5 a gated output
    # (silu and the product), the norm's 3 a normed element, the partials summed; bytes as the plain form's with
    # the [6, 5] weight, the [7, 3] gated output, and each of the 7 rows' one program re-reading its 2 partials
    assert cost("rms_norm_linear_glu_sumsq", [[7, 5], [7, 2], [5], [6, 5]], [7, 3], eps=1e-6, act="silu") == (
        420 + 5 * 21 + 3 * 35 + 14, 4 * (35 + 14 + 5 + 30 + 21) + 7 * 1 * 4 * 2)
    f, b = get_op("linear_add_sumsq").cost([TensorType(torch.float32, s) for s in ([7, 5], [3, 5], [7, 3])],
                                           [TensorType(torch.float32, [7, 3]), TensorType(torch.float32, [7, 1])], {})
    assert (int(f), int(b)) == (210 + 21 + 2 * 21, 4 * (35 + 15 + 21 + 21 + 7))
    assert cost("gated_linear_add", [[7, 5], [7, 5], [3, 5], [7, 3]], [7, 3], act="silu") == (
        385 + 21, 4 * (35 + 35 + 15 + 21 + 21))   # gated_linear's 385 at these shapes: the table's row


def test_attention_block_costs_by_hand() -> None:
    """x f32[1, 1, 8], 2 q heads over 1 kv head of dim 4, caches [1, 1, T, 4]: the projections 2 * (16 * 8 + 8 * 8) =
    384 FLOPs, the attention over the T filled slots 2 * 2 heads * T * (4 + 4) = 32 T. Bytes, 4 each: the weights
    (norm 8, q/k/v 16 x 8, o 8 x 8: 200 values), x read and the output written (16), cos and sin (8), the new k and
    v written (8), the positions (one i64: 8 bytes) and K / V over T slots (8 values a slot): 936 + 32 T."""
    import sympy
    import torch

    from membound.ir import TensorType

    t = sympy.Symbol("T", positive=True, integer=True)
    f32 = torch.float32
    ins = [TensorType(f32, s) for s in ([1, 1, 8], [8], [16, 8], [1, 1, 4], [1, 1, 4], [1, 1, t, 4], [1, 1, t, 4])]
    ins += [TensorType(torch.int64, [1, 1]), TensorType(f32, [8, 8])]
    f, b = get_op("attention_block").cost(ins, [TensorType(f32, [1, 1, 8])],
                                          dict(eps=1e-6, num_heads=2, num_kv_heads=1, head_dim=4, scale=None))
    assert sympy.simplify(f - (384 + 32 * t)) == 0, f
    assert sympy.simplify(b - (936 + 32 * t)) == 0, b


def test_mlp_block_costs_by_hand() -> None:
    """x f32[3, 1, 8], I = 6 (gate/up [12, 8], down [8, 6]): FLOPs per row the norm 5 * 8 = 40, gate/up 2 * 12 * 8 = 192,
    the gating 5 * 6 = 30, down 2 * 8 * 6 = 96, the residual 8: 366, 1098 for 3 rows. Bytes, 4 each: x read and the
    output written (24 + 24 values), the norm weight 8, gate/up 96, down 48: 200 values, 800 bytes."""
    import torch

    from membound.ir import TensorType

    f32 = torch.float32
    ins = [TensorType(f32, s) for s in ([3, 1, 8], [8], [12, 8], [8, 6])]
    f, b = get_op("mlp_block").cost(ins, [TensorType(f32, [3, 1, 8])], dict(eps=1e-6, act="silu"))
    assert int(f) == 1098 and int(b) == 800, (f, b)


def test_linear_attention_state_costs_by_hand() -> None:
    """The unfused form's bytes less the state's two extra passes: inputs once, y written, the state read and written
    once (in place); the FLOPs of linear_attention."""
    import torch

    from membound.ir.types import TensorType

    f32 = torch.float32
    ins = [TensorType(f32, [2, 5, 3, 4]), TensorType(f32, [2, 5, 3]), TensorType(f32, [2, 5, 3, 4]),
           TensorType(f32, [2, 5, 3, 6]), TensorType(f32, [2, 5, 3]), TensorType(f32, [2, 1, 3, 4, 6]),
           TensorType(torch.int64, [2, 1])]
    f, b = get_op("linear_attention_state").cost(ins, [TensorType(f32, [2, 5, 3, 6])], {"dim": 1, "delta": True})
    assert f == 7 * 2 * 3 * 4 * 6 * 5
    assert b == 4 * (120 + 30 + 120 + 180 + 30 + 144) + 16 + 4 * 180 + 4 * 144
