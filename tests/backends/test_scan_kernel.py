"""The ``linear_scan`` and ``linear_attention`` kernels against the ops' torch references at odd sizes (the Triton
interpreter on CPU, compiled on a GPU): along the first, a middle and the last dim, with and without an initial state,
a transposed input, S = 1 (a decode step) and 37. ``linear_scan``: fp32 within 1e-6 (the same recurrence; the kernel
may contract a * h + b into one FMA); fp16 within 1e-3 (both round each product and each state to fp16, as torch's
fp16 mul and add do). ``linear_attention``: fp32 within 1e-5 (its reads sum K products in another order); fp16
within 2e-2 (the kernel keeps its state in fp32, the reference rounds each op to fp16)."""

from __future__ import annotations

import pytest
import torch
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

from membound.ir.ops import get_op

INTERP = Interpreted(__file__)
TOL = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.float16: dict(rtol=1e-3, atol=1e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("shape, dim, init", [((3, 37, 5), 1, False), ((2, 7, 1, 9), 1, True), ((37, 6), 0, True),
                                              ((2, 3, 5, 1), 2, True), ((3, 5, 37), -1, False), ((1, 300, 1), 0, False)])
def test_linear_scan_kernel_equals_the_reference(shape, dim, init, dtype, request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import LIBRARY, trace

    g = torch.Generator().manual_seed(0)
    a = (torch.rand(shape, generator=g) * 1.2 - 0.1).to(dtype).to(DEVICE)  # decays, a few above 1
    b = torch.randn(shape, generator=g).to(dtype).to(DEVICE)
    d = dim % len(shape)
    h0 = [torch.randn(tuple(1 if i == d else n for i, n in enumerate(shape)), generator=g).to(dtype).to(DEVICE)] \
        if init else []
    want = get_op("linear_scan").reference(a, b, *h0, dim=dim)
    with trace() as calls:
        got = LIBRARY["linear_scan"](a, b, *h0, dim=dim)
    assert ("linear_scan", "kernel") in calls
    torch.testing.assert_close(got, want, **TOL[dtype])


def test_a_transposed_input_and_an_out_buffer(request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import LIBRARY

    g = torch.Generator().manual_seed(1)
    a = torch.rand(5, 2, 11, generator=g).to(DEVICE).transpose(0, 2)  # [11, 2, 5], strided
    b = torch.randn(11, 2, 5, generator=g).to(DEVICE)
    out = torch.empty(11, 2, 5, device=DEVICE)
    got = LIBRARY["linear_scan"](a, b, out=out, dim=0)
    assert got is out
    torch.testing.assert_close(got, get_op("linear_scan").reference(a, b, dim=0), rtol=1e-6, atol=1e-6)


def test_the_kernel_compiles_for_hopper() -> None:
    """The interpreter never meets the compiler: the scan compiled for sm_90 in bf16 and fp32, with and without an
    initial state, at a Mamba layer's shape (no GPU needed; a process without TRITON_INTERPRET)."""
    import json

    script = """
import json
from membound.backends.triton.kernels.compile_check import compile_ptx
from membound.backends.triton.kernels.scan import _linear_scan
for dt in ("bf16", "fp32"):
    for init in (True, False):
        args = dict(a_ptr="*fp32", b_ptr="*fp32", h0_ptr=f"*{dt}", out_ptr=f"*{dt}", S="i32", INNER="i32",
                    sao="i64", sas="i64", sai="i64", sbo="i64", sbs="i64", sbi="i64", sho="i64", shi="i64",
                    soo="i64", sos="i64", soi="i64", HAS_INIT=init, BLOCK=256, USE_PDL=1)
        ptx, shared = compile_ptx(_linear_scan, args, 90, num_warps=4)
        print(json.dumps(dict(dtype=dt, init=init, stores=ptx.count("st.global"))))
"""
    from _triton_interp import compiled_in_subprocess

    results = [json.loads(line) for line in compiled_in_subprocess(script).splitlines() if line.startswith("{")]
    assert len(results) == 4 and all(r["stores"] >= 1 for r in results), results


DELTA_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-2, atol=2e-2)}


def _la_inputs(lead, kv, dim, init, per_k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(*lead, *kv[:1] if per_k else (), generator=g) * 0.5 + 0.5    # decays
    beta = torch.rand(lead, generator=g)
    k = torch.nn.functional.normalize(torch.randn(*lead, kv[0], generator=g), dim=-1)  # unit keys, as the models
    q, v = torch.randn(*lead, kv[0], generator=g), torch.randn(*lead, kv[1], generator=g)
    d = dim % len(lead)
    h0 = [torch.randn(*(1 if i == d else n for i, n in enumerate(lead)), *kv, generator=g)] if init else []
    return [x.to(dtype).to(DEVICE) for x in (q, a, k, v, beta, *h0)]


# (the interpreter is slow: each case varies several things at once rather than a full cross product)
@pytest.mark.parametrize("lead, kv, dim, init, per_k, delta, dtype", [
    ((2, 9, 3), (5, 7), 1, False, False, True, torch.float32),
    ((2, 1, 3), (5, 7), 1, True, False, True, torch.float16),      # a decode step
    ((11, 2), (3, 37), 0, True, False, False, torch.float32),      # V over two blocks, Mamba-2's plain write
    ((3, 2, 4), (9, 5), -1, False, False, False, torch.float16),
    ((1, 37, 1), (16, 16), 1, True, False, True, torch.float32),
    ((2, 9, 3), (5, 7), 1, True, True, True, torch.float32),       # KDA: a decay per key channel
    ((2, 1, 3), (6, 3), 1, True, True, False, torch.float16)])
def test_linear_attention_kernel_equals_the_reference(lead, kv, dim, init, per_k, delta, dtype,
                                                      request: pytest.FixtureRequest) -> None:
    """per_k: a decay per key channel (Kimi's KDA), ``a [.., K]``; delta: the delta rule (else Mamba-2's plain
    write)."""
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import LIBRARY, trace

    args = _la_inputs(lead, kv, dim, init, per_k, dtype)
    want_y, want_state = get_op("linear_attention").reference(*args, dim=dim, delta=delta)
    with trace() as calls:
        y, state = LIBRARY["linear_attention"](*args, dim=dim, delta=delta)
    assert ("linear_attention", "kernel") in calls
    assert y.shape == (*lead, kv[1]) and y.dtype == dtype and state.shape == want_state.shape
    torch.testing.assert_close(y, want_y, **DELTA_TOL[dtype])
    torch.testing.assert_close(state, want_state, **DELTA_TOL[dtype])


def test_linear_attention_with_strided_inputs(request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import LIBRARY

    q, a, k, v, beta = _la_inputs((5, 3, 2), (4, 6), 0, False, False, torch.float32, seed=1)
    a = a.transpose(0, 1).contiguous().transpose(0, 1)                  # [5, 3, 2], strided
    v = v.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)          # [5, 3, 2, 6], strided
    y, state = LIBRARY["linear_attention"](q, a, k, v, beta, dim=0, delta=True)
    want_y, want_state = get_op("linear_attention").reference(q, a, k, v, beta, dim=0, delta=True)
    torch.testing.assert_close(y, want_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, want_state, rtol=1e-5, atol=1e-5)


def test_the_linear_attention_kernel_compiles_for_hopper() -> None:
    """The kernel compiled for sm_90 in bf16 and fp32, in place on a state buffer with its start flags (the cached
    step) and without an initial state (with a decay per key channel and the plain write), at a Qwen3.5 layer's head
    (K = V = 128: a [128, 32] block of the state per program)."""
    import json

    script = """
import json
from membound.backends.triton.kernels.compile_check import compile_ptx
from membound.backends.triton.kernels.scan import _linear_attention
strides = ("sqo sqs sqi sqk sao sas sai sak sko sks ski skk svo svs svi svv sbo sbs sbi sho shi shk shv syo sys syi "
           "syv sno sni snk snv").split()
for dt in ("bf16", "fp32"):
    for init in (True, False):
        args = dict(q_ptr=f"*{dt}", a_ptr=f"*{dt}", k_ptr=f"*{dt}", v_ptr=f"*{dt}", beta_ptr=f"*{dt}",
                    h0_ptr=f"*{dt}", y_ptr=f"*{dt}", hn_ptr=f"*{dt}", S="i32", INNER="i32", K="i32", V="i32",
                    **{n: "i64" for n in strides}, start_ptr="*i64", OB="i32", sst="i64", HAS_INIT=init,
                    HAS_START=init, PER_K=not init, DELTA=init, BK=128, BV=32, USE_PDL=1)
        ptx, shared = compile_ptx(_linear_attention, args, 90, num_warps=4)
        print(json.dumps(dict(dtype=dt, init=init, stores=ptx.count("st.global"))))
"""
    from _triton_interp import compiled_in_subprocess

    results = [json.loads(line) for line in compiled_in_subprocess(script).splitlines() if line.startswith("{")]
    assert len(results) == 4 and all(r["stores"] >= 2 for r in results), results


@pytest.mark.parametrize("lead, kv, per_k, delta, dtype", [((3, 1, 2), (5, 7), False, True, torch.float32),
                                                           ((3, 4, 2), (6, 37), True, False, torch.float32),
                                                           ((3, 1, 2), (5, 7), False, True, torch.float16)])
def test_linear_attention_state_writes_the_state_in_place(lead, kv, per_k, delta, dtype,
                                                          request: pytest.FixtureRequest) -> None:
    """``linear_attention_state`` (kernel and op reference) equals the unfused ``where`` / ``linear_attention``: rows
    0 and 2 start at position 0 (their state read as zero), row 1 later; y returned, the last state in the buffer."""
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import LIBRARY, trace

    q, a, k, v, beta, state = _la_inputs(lead, kv, 1, True, per_k, dtype, seed=2)
    start = torch.tensor([[0], [5], [0]], device=DEVICE)
    fresh = (start[:, 0] == 0).reshape(-1, 1, 1, 1, 1)
    want_y, want_state = get_op("linear_attention").reference(q, a, k, v, beta, torch.where(fresh, 0.0, state).to(dtype),
                                                              dim=1, delta=delta)
    for impl in ("reference", "kernel"):
        buf = state.clone()
        if impl == "reference":
            y = get_op("linear_attention_state").reference(q, a, k, v, beta, buf, start, dim=1, delta=delta)
        else:
            with trace() as calls:
                y = LIBRARY["linear_attention_state"](q, a, k, v, beta, buf, start, dim=1, delta=delta)
            assert ("linear_attention_state", "kernel") in calls
        torch.testing.assert_close(y, want_y, **DELTA_TOL[dtype])
        torch.testing.assert_close(buf, want_state, **DELTA_TOL[dtype])
