"""The quantized matmul kernels (``quant_linear``, ``quant_gated_linear``) against dequantize-then-matmul.

Without a GPU the kernels run under the Triton interpreter on CPU tensors, in fp32 and fp16 (bf16 is
broken in the interpreter): ``TRITON_INTERPRET=1`` is set below, before anything imports triton. The
reference is the op's semantics: the weight dequantized to x's dtype (``ir/ops/quant.py``), then the
product computed in fp32 from those rounded values. Every test checks, through ``trace()``, that the
kernel ran and not the fallback. Inputs are random and never zero; sizes are odd (K = 77 or 300: not a
multiple of any group, K < 128; K = 64, 80, 320 for the int4 GEMV's int32-word path; N in 1, 7, 33; M in
1, 2, 5, 17, 40). Tolerances: fp32 1e-4
(relative and absolute; outputs are O(1)), fp16 1e-2 (the output is rounded to fp16 once, and the
kernels keep dequantized int4/int8 weights in fp32 where the reference rounds them to fp16: 2^-11
relative per weight).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

from typing import Optional  # noqa: E402

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from membound.backends.triton.kernels import LIBRARY, QuantConfig, trace  # noqa: E402
from membound.backends.triton.kernels import quant_matmul as qm  # noqa: E402
from membound.ir import get_op  # noqa: E402
from membound.ir.ops.quant import dequantize, quantize  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2),
       torch.bfloat16: dict(rtol=1e-2, atol=2e-2)}
CPU_DTYPES = [torch.float32, torch.float16]


def rand(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, device: str = DEVICE) -> torch.Tensor:
    """Random values away from zero: |x| in [0.5, 1.5) with a random sign."""
    gen = torch.Generator().manual_seed(seed + sum(shape) + len(shape))
    mag = torch.rand(shape, generator=gen) + 0.5
    sign = torch.where(torch.rand(shape, generator=gen) > 0.5, 1.0, -1.0)
    return (mag * sign).to(dtype).to(device)


def packed(n: int, k: int, scheme: str, group: int, dtype: torch.dtype, seed: int = 1):
    """(qweight, scales, the dequantized weight in ``dtype``) of a random weight scaled to O(1) outputs."""
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed + n + k)) * k ** -0.5
    q, s = quantize(w.to(dtype).to(DEVICE), scheme, group or 128)
    return q, s, dequantize(q, s, scheme, group, k, dtype)


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype, f"result dtype {got.dtype}, expected {dtype}"
    torch.testing.assert_close(got.float(), want.float().to(got.device), **TOL[dtype])


def ran(calls: list[tuple[str, str]], op: str, path: str = "kernel") -> None:
    assert calls and all(c == (op, path) for c in calls), f"expected the {op} {path} path, got {calls}"


QL_CASES = [
    # (scheme, group, x shape, N, bias, config); K = x.shape[-1]
    ("int8", 0, (1, 1, 77), 33, True, None),                               # M = 1: tensor cores (default)
    ("int8", 0, (2, 77), 7, False, None),                                  # GEMV, M = 2
    ("int8", 0, (5, 77), 33, True, None),                                  # tensor cores, M = 5
    ("int8", 0, (17, 77), 1, False, None),                                 # tensor cores, M = 17, N = 1
    ("int8", 0, (1, 300), 33, False, QuantConfig(1, 8, 64, split_k=4)),    # GEMV, K split in 4 (odd tail)
    ("fp8", 0, (1, 77), 33, True, None),
    ("fp8", 0, (5, 1, 77), 7, False, None),
    ("int4", 32, (1, 77), 33, True, None),                                 # odd K, partial last group
    ("int4", 32, (2, 77), 7, False, None),
    ("int4", 32, (5, 77), 33, True, None),
    ("int4", 128, (1, 77), 33, False, None),                               # K < group
    ("int4", 128, (17, 77), 7, True, None),
    ("int4", 128, (2, 300), 33, True, QuantConfig(2, 16, 64, split_k=3)),  # GEMV split, groups of 2 tiles
    ("int4", 32, (5, 300), 33, False, QuantConfig(16, 16, 32, split_k=4, use_dot=True)),  # dot, split
    ("int4", 32, (2, 77), 7, False, QuantConfig(2, 8, 64)),                # tile of 2 groups: per-element scales
    ("int4", 16, (5, 77), 7, True, None),                                  # group 16 on tensor cores: gathered
    ("int4", 32, (40, 77), 33, True, QuantConfig(16, 16, 32, use_dot=True)),  # M > 32 forced: 3 blocks of M
    # K % 8 == 0: the GEMV reads int32 words of eight nibbles
    ("int4", 32, (1, 80), 33, True, None),                                 # words, partial last group
    ("int4", 128, (2, 64), 7, False, None),                                # words, K < group, M = 2
    ("int4", 64, (1, 320), 33, False, QuantConfig(1, 16, 64, split_k=3)),  # words, K split
    ("int4", 32, (1, 80), 7, False, QuantConfig(1, 16, 32, words=False)),  # bytes where words could run
    ("int4", 32, (2, 320), 33, True, QuantConfig(2, 16, 128, split_k=2)),  # words, tile of 4 groups, split
    ("int4", 64, (1, 320), 9, False, QuantConfig(1, 8, 128, prefetch_x=True)),  # x double-buffered too
    ("int4", 32, (5, 160), 33, False, QuantConfig(16, 16, 64, use_dot=True)),  # dot on words, tile of 2 groups
]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("scheme,group,shape,n,bias,config", QL_CASES)
def test_quant_linear(scheme: str, group: int, shape: tuple[int, ...], n: int, bias: bool,
                      config: Optional[QuantConfig], dtype: torch.dtype) -> None:
    k = shape[-1]
    x = rand(*shape, dtype=dtype)
    q, s, w = packed(n, k, scheme, group, dtype)
    b = rand(n, dtype=dtype, seed=3) if bias else None
    with trace() as calls:
        y = LIBRARY["quant_linear"](x, q, s, b, scheme=scheme, group_size=group, in_features=k, config=config)
    ran(calls, "quant_linear")
    assert y.shape == shape[:-1] + (n,)
    close(y, F.linear(x.float(), w.float(), None if b is None else b.float()), dtype)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("scheme,group,m,k,n,config", [
    ("int8", 0, 1, 77, 33, QuantConfig(1, 8, 64)),                         # GEMV
    ("int4", 32, 5, 77, 7, None),                                          # tensor cores, partial group
    ("fp8", 0, 2, 300, 7, QuantConfig(2, 8, 64, split_k=3)),               # GEMV, K split
    ("int4", 32, 2, 80, 7, None),                                          # GEMV over words, gate formed first
    ("int4", 32, 1, 80, 7, QuantConfig(1, 16, 32, pre_gate=False)),       # gate formed in the loop
    ("int8", 0, 1, 77, 33, QuantConfig(16, 16, 32, use_dot=True)),        # tensor cores at M = 1: one row gated
    ("int4", 32, 2, 80, 7, QuantConfig(16, 16, 32, use_dot=True)),        # two real rows of 16
    ("int8", 0, 2, 77, 33, None),                                          # default: tensor cores at M = 2
    ("fp8", 0, 2, 77, 9, QuantConfig(16, 16, 32, split_k=2, use_dot=True)),  # and K split
    ("int8", 0, 5, 600, 9, QuantConfig(16, 16, 64, split_k=2, use_dot=True, tc_pre_gate=True)),  # gate first
    # the gate formed first over several prologue steps (8 rows x 512 columns a step; one row x 4096)
    ("int8", 0, 5, 1300, 9, QuantConfig(16, 16, 64, use_dot=True, tc_pre_gate=True)),
    ("int4", 32, 1, 4200, 5, QuantConfig(1, 8, 64)),
])
def test_quant_gated_linear(scheme: str, group: int, m: int, k: int, n: int, config: Optional[QuantConfig],
                            dtype: torch.dtype) -> None:
    """gate and up as the two halves of one wider projection output (strided views, as after merge-linear)."""
    gu = rand(m, 1, 2 * k, dtype=dtype)
    gate, up = gu[..., :k], gu[..., k:]
    q, s, _ = packed(n, k, scheme, group, dtype)
    with trace() as calls:
        y = LIBRARY["quant_gated_linear"](gate, up, q, s, scheme=scheme, group_size=group, in_features=k,
                                          config=config)
    ran(calls, "quant_gated_linear")
    assert y.shape == (m, 1, n)
    want = get_op("quant_gated_linear").reference(gate, up, q, s, scheme=scheme, group_size=group, in_features=k)
    close(y, want, dtype)


def test_prefill_takes_the_path_the_cost_rule_picks() -> None:
    """M > 32 without a config: the fused kernel or dequantize + cuBLAS, whichever ``prefill_path`` says;
    the same result either way."""
    x = rand(40, 77)
    q, s, w = packed(33, 77, "int4", 32, torch.float32)
    want = qm.prefill_path(40, 33, 77, "int4", 32, torch.float32, x.device)
    with trace() as calls:
        y = qm.quant_linear(x, q, s, scheme="int4", group_size=32, in_features=77)
    ran(calls, "quant_linear", want)
    close(y, F.linear(x, w), torch.float32)


def test_prefill_cost_rule_on_an_h200() -> None:
    """On the H200 datasheet: a 64-row int4 product streams (fused kernel), a 4096-row prefill is compute
    (dequantize once, then cuBLAS at the full tensor-core rate); int8's crossover comes no earlier."""
    from membound.cost.hardware import Hardware

    h200, dev = Hardware.named("h200"), torch.device("cpu")

    def path(m: int, scheme: str, group: int) -> str:
        t = qm.prefill_times(m, 4096, 4096, scheme, group, torch.bfloat16, dev, hw=h200)
        return "kernel" if t["kernel"] <= t["cublas"] else "cublas"

    assert path(64, "int4", 128) == "kernel" and path(4096, "int4", 128) == "cublas"
    assert path(64, "int8", 0) == "kernel" and path(4096, "int8", 0) == "cublas"


def test_fp8_from_bits_matches_the_native_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bit decode (cards before sm_89) on every finite e4m3 code, subnormals and both signs included."""
    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F].view(torch.float8_e4m3fn).to(DEVICE)  # drop the two NaNs
    q = codes.view(2, 127)
    s = rand(2, seed=5)
    x = torch.zeros(2, 127, device=DEVICE)
    x[0, 5], x[1, 100] = 1.0, -2.0  # pick single codes, including subnormals
    monkeypatch.setattr(qm, "fp8_from_bits", lambda device: True)
    for xs in (torch.eye(127, device=DEVICE)[:2] + 0.25, x):
        with trace() as calls:
            y = qm.quant_linear(xs, q, s, scheme="fp8", in_features=127, config=QuantConfig(2, 2, 128))
        ran(calls, "quant_linear")
        close(y, F.linear(xs, dequantize(q, s, "fp8", 0, 127)), torch.float32)


@pytest.mark.parametrize("static_weight", [True, False])
def test_static_weight_loads_the_first_tile_either_side_of_the_wait(static_weight: bool) -> None:
    x = rand(1, 300)
    q, s, w = packed(37, 300, "int4", 64, torch.float32)
    with trace() as calls:
        y = qm.quant_linear(x, q, s, scheme="int4", group_size=64, in_features=300, static_weight=static_weight)
    ran(calls, "quant_linear")
    close(y, F.linear(x, w), torch.float32)


def test_split_k_leaves_the_counters_zeroed_and_repeats_exactly() -> None:
    from membound.backends.triton.kernels._launch import split_counters

    x, b = rand(3, 300), rand(37)
    q, s, w = packed(37, 300, "int8", 0, torch.float32)
    cfg = QuantConfig(16, 16, 32, split_k=4, use_dot=True)
    first = qm.quant_linear(x, q, s, b, scheme="int8", in_features=300, config=cfg)
    assert int(split_counters(x.device, 1).abs().sum()) == 0
    again = qm.quant_linear(x, q, s, b, scheme="int8", in_features=300, config=cfg)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    close(first, F.linear(x, w, b), torch.float32)


def test_out_and_strided_x() -> None:
    x = rand(77, 3).t()  # [3, 77], strides (1, 3)
    q, s, w = packed(5, 77, "int4", 32, torch.float32)
    out = torch.empty(3, 5, device=DEVICE)
    with trace() as calls:
        y = qm.quant_linear(x, q, s, out=out, scheme="int4", group_size=32, in_features=77)
    ran(calls, "quant_linear")
    assert y is out
    close(out, x @ w.t(), torch.float32)


def test_cpu_without_interpreter_runs_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = rand(2, 9, device="cpu")
    w = torch.randn(4, 9)
    q, s = quantize(w, "int8")
    with trace() as calls:
        y = qm.quant_linear(x, q, s, scheme="int8", in_features=9)
    assert len(calls) == 1 and calls[0][1].startswith("fallback: tensors on cpu")
    close(y, F.linear(x, dequantize(q, s, "int8", 0, 9)), torch.float32)


def test_errors_name_the_argument() -> None:
    q, s, _ = packed(4, 40, "int4", 32, torch.float32)
    x = rand(2, 40)
    with pytest.raises(ValueError, match="quant_linear: x .* and in_features=40 disagree on K"):
        qm.quant_linear(rand(2, 8), q, s, scheme="int4", group_size=32, in_features=40)
    with pytest.raises(ValueError, match=r"quant_linear: int4 scales must be \[4, 3, 2\]"):
        qm.quant_linear(x, q, s, scheme="int4", group_size=16, in_features=40)
    with pytest.raises(ValueError, match="quant_linear: int4 group_size must be one of"):
        qm.quant_linear(x, q, s, scheme="int4", group_size=0, in_features=40)
    with pytest.raises(TypeError, match="quant_linear: int8 qweight must be torch.int8"):
        qm.quant_linear(x, q, s, scheme="int8", in_features=40)
    with pytest.raises(TypeError, match="must share the activation dtype"):
        qm.quant_linear(x.half(), q, s, scheme="int4", group_size=32, in_features=40)
    with pytest.raises(ValueError, match="block_k=48 must divide group_size=32"):
        qm.quant_linear(x, q, s, scheme="int4", group_size=32, in_features=40, config=QuantConfig(2, 4, 48))
    with pytest.raises(ValueError, match="quant_gated_linear: act='gelu' has no kernel"):
        qm.quant_gated_linear(x, x, q, s, scheme="int4", group_size=32, in_features=40, act="gelu")


def test_registered_for_the_codegen() -> None:
    from membound.backends.triton.lowering import static_weight_input

    for op, weight_index in (("quant_linear", 1), ("quant_gated_linear", 2)):
        assert get_op(op).reference is not None and op in LIBRARY
        assert static_weight_input(op) == weight_index
        assert get_op(op).inputs[weight_index] == "qweight"


def test_bytes() -> None:
    # 4096 x 4096 at M = 1, bf16: int4 g128 = 8 MiB of nibbles + 4096 * 32 groups * 2 * 2 bytes of scales
    assert qm.quant_linear_bytes(1, 4096, 4096, "int4", 128, torch.bfloat16) == 4096 * 2048 + 4096 * 32 * 4 + 2 * 8192
    assert qm.quant_linear_bytes(2, 7, 77, "int8", 0, torch.float16) == 7 * 77 + 7 * 2 + 2 * (2 * 77 + 2 * 7)
    assert qm.quant_linear_bytes(1, 7, 77, "int4", 32, torch.float32) == 7 * 39 + 7 * 3 * 2 * 4 + 4 * (77 + 7)


def test_kernel_compiles_for_hopper_with_vector_loads() -> None:
    """Compile for sm_90 without a GPU (no TRITON_INTERPRET) and read the PTX: the packed weight comes in
    16-byte vectors (or cp.async copies on the tensor-core path), the dot path uses mma, no int -> float
    conversion is left, and the kernel waits for its predecessor under PDL."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "membound.backends.triton.kernels.quant_matmul", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) >= 6 and any("words" in r["config"] for r in results)
    for r in results:
        assert r["vectorised"] and r["pdl_wait"], r
        assert (r["mma"] > 0) == ("dot" in r["config"]), r
        assert r["i2f"] == 0, r  # codes become floats by bit tricks, not the 16-a-clock int -> float unit


# ---------------------------------------------------------------------------------------------
# GPU: bf16 (broken in the interpreter) and the default configs at model-like sizes
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("scheme,group", [("int8", 0), ("int4", 128), ("int4", 32), ("fp8", 0)])
@pytest.mark.parametrize("m", [1, 4, 16, 64])
def test_quant_linear_gpu(scheme: str, group: int, m: int) -> None:
    dtype, n, k = torch.bfloat16, 4096, 4096
    if scheme == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 weights need sm_89+ (the bit-decode path is tested on CPU)")
    x = rand(m, k, dtype=dtype, device="cuda")
    q, s, w = packed(n, k, scheme, group, dtype)
    with trace() as calls:
        y = qm.quant_linear(x, q, s, scheme=scheme, group_size=group, in_features=k)
        g = qm.quant_gated_linear(x, x.flip(1), q, s, scheme=scheme, group_size=group, in_features=k)
    assert all(path in ("kernel", "cublas") for _, path in calls), calls
    if m <= qm.SMALL_M:
        assert all(path == "kernel" for _, path in calls), calls
    close(y, F.linear(x.float(), w.float()), dtype)
    gx = (F.silu(x) * x.flip(1)).float()
    close(g, F.linear(gx, w.float()), dtype)


@pytest.mark.parametrize("scheme,n,k,dot", [
    ("int8", 4096, 4096, True), ("int8", 6144, 4096, True),   # int8/fp8: always tensor cores (gated ops too)
    ("fp8", 4096, 14336, True), ("int8", 4096, 14336, True),
    ("int4", 28672, 4096, False), ("int4", 128256, 4096, True),  # int4: lm heads only
    ("int4", 128256, 4100, False),                              # int4 without whole words
])
def test_gemv_path_choice(scheme, n, k, dot, monkeypatch: pytest.MonkeyPatch):
    """M <= 2 picks the kernel the H200 measurement favours (``tensor_cores_at_gemv``) where the int4 pairs
    path does not apply (fp32 x, or ``INT4_PAIRS`` off); M = 16 is always dot."""
    cpu = torch.device("cpu")
    for dtype, pairs_on in ((torch.float32, True), (torch.float16, False)):
        monkeypatch.setattr(qm, "INT4_PAIRS", pairs_on)
        for m in (1, 2):
            cfg = qm.pick_config(m, n, k, scheme, 128, dtype, cpu)
            assert cfg.use_dot is dot, (m, cfg)
            assert (cfg.block_m == 16) is dot
            assert not cfg.pairs
        assert qm.pick_config(16, n, k, scheme, 128, dtype, cpu).use_dot


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(6144, 4096), (28672, 4096), (4096, 14336), (128256, 4096), (7, 77)])
def test_int4_pairs_path_choice(n: int, k: int, dtype: torch.dtype) -> None:
    """int4 with 16-bit x takes the pairs kernel at every decode M (tensor cores, bytes), never beyond 32."""
    cpu = torch.device("cpu")
    for m, block_m in ((1, 16), (2, 16), (5, 16), (16, 16), (17, 32), (32, 32)):
        cfg = qm.pick_config(m, n, k, "int4", 128, dtype, cpu)
        assert cfg.pairs and cfg.use_dot and cfg.block_m == block_m and cfg.block_n == qm.PAIRS_BLOCK_N, (m, cfg)
        assert 128 % cfg.block_k == 0 and cfg.block_k >= 32
    assert not qm.pick_config(33, n, k, "int4", 128, dtype, cpu).pairs
    assert not qm.pick_config(1, n, k, "int8", 0, dtype, cpu).pairs
