"""NaN and inf go through generated Triton kernels exactly as through eager PyTorch.

Every generated reduction (sum, mean, amax, amin, cumsum, softmax, log_softmax, rms_norm, layer_norm)
and every min/max-style elementwise op (clamp, maximum, minimum, relu) runs on rows holding a NaN,
+inf, -inf, both infinities, only -inf, and NaN with inf, in fp32 and fp16. The Triton result must
have NaN, +inf and -inf at exactly the places the reference backend (torch ops) has them; the finite
values agree to 1e-5 (fp32) / 1e-2 (fp16) relative to the largest finite magnitude.
"""

from __future__ import annotations

import pytest
import torch
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

from membound.backends.reference import run_graph
from membound.backends.triton import TritonExecutable
from membound.ir import parse, sym, verify

INTERP = Interpreted(__file__)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
NAN, INF = float("nan"), float("inf")
DT = {torch.float32: "f32", torch.float16: "f16"}
TOL = {torch.float32: 1e-5, torch.float16: 1e-2}
N = 7  # row length

# one graph per op family, so a wrong fusion of one op cannot hide another's semantics
GRAPHS: dict[str, str] = {
    "sum_mean": """graph @t(%x: {dt}[R, 7]) {{
        %s = sum(%x) {{dims=[-1], keepdim=false, dtype=none}} : {dt}[R]
        %m = mean(%x) {{dims=[-1], keepdim=true, dtype=none}} : {dt}[R, 1]
        %y = sub(%x, %m) : {dt}[R, 7]
        return %s, %y
    }}""",
    "amax_amin": """graph @t(%x: {dt}[R, 7]) {{
        %mx = amax(%x) {{dims=[-1], keepdim=false}} : {dt}[R]
        %mn = amin(%x) {{dims=[-1], keepdim=true}} : {dt}[R, 1]
        %y = sub(%x, %mn) : {dt}[R, 7]
        return %mx, %y
    }}""",
    "cumsum": """graph @t(%x: {dt}[R, 7]) {{
        %c = cumsum(%x) {{dim=-1, dtype=none}} : {dt}[R, 7]
        return %c
    }}""",
    "softmax": """graph @t(%x: {dt}[R, 7]) {{
        %p = softmax(%x) {{dim=-1, dtype=none}} : {dt}[R, 7]
        %l = log_softmax(%x) {{dim=-1, dtype=none}} : {dt}[R, 7]
        return %p, %l
    }}""",
    "rms_norm": """graph @t(%x: {dt}[R, 7]) params(%w: {dt}[7]) {{
        %n = rms_norm(%x, %w) {{eps=1e-05}} : {dt}[R, 7]
        return %n
    }}""",
    "layer_norm": """graph @t(%x: {dt}[R, 7]) params(%w: {dt}[7], %b: {dt}[7]) {{
        %n = layer_norm(%x, %w, %b) {{ndim=1, eps=1e-05}} : {dt}[R, 7]
        return %n
    }}""",
    "min_max_ops": """graph @t(%x: {dt}[R, 7], %z: {dt}[R, 7]) {{
        %c = clamp(%x) {{min=-0.75, max=1.0}} : {dt}[R, 7]
        %lo = clamp(%x) {{min=-0.25, max=none}} : {dt}[R, 7]
        %hi = clamp(%x) {{min=none, max=0.25}} : {dt}[R, 7]
        %mx = maximum(%x, %z) : {dt}[R, 7]
        %mn = minimum(%z, %x) : {dt}[R, 7]
        %r = relu(%x) : {dt}[R, 7]
        return %c, %lo, %hi, %mx, %mn, %r
    }}""",
}


def special_rows(dtype: torch.dtype, seed: int) -> torch.Tensor:
    """[R, 7]: random finite rows with NaN / inf planted at the start, middle and end of rows."""
    gen = torch.Generator().manual_seed(seed)
    plants: list[dict[int, float]] = [
        {}, {3: NAN}, {0: NAN}, {6: NAN}, {2: INF}, {4: -INF}, {1: INF, 5: -INF}, {1: NAN, 2: INF},
        {0: -INF, 6: -INF}, {j: -INF for j in range(N)}, {j: INF for j in range(N)}, {j: NAN for j in range(N)},
        {5: INF, 6: INF},
    ]
    x = (torch.rand(len(plants), N, generator=gen) + 0.5) * torch.where(torch.rand(len(plants), N, generator=gen)
                                                                        > 0.5, 1.0, -1.0)
    for r, p in enumerate(plants):
        for j, v in p.items():
            x[r, j] = v
    return x.to(dtype)


def assert_same_nonfinite(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    got, want = got.float().cpu(), want.float().cpu()
    assert got.shape == want.shape, what
    for name, f in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        bad = f(got) != f(want)
        assert not bad.any(), f"{what}: {name} differs at {bad.nonzero().tolist()[:6]}:\ngot  {got}\nwant {want}"
    fin = torch.isfinite(want)
    if fin.any():
        scale = want[fin].abs().max().clamp_min(1e-6)
        err = ((got[fin] - want[fin]).abs().max() / scale).item()
        assert err <= tol, f"{what}: finite values off by {err:.2e} (relative) > {tol:.0e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", sorted(GRAPHS))
def test_nan_and_inf_propagate_as_in_eager(case: str, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    g = parse(GRAPHS[case].format(dt=DT[dtype]))
    gen = torch.Generator().manual_seed(0)
    for p in g.params:
        g.tensors[p.name] = (torch.rand(p.type.concrete_shape({}), generator=gen) + 0.5).to(dtype).to(DEVICE)
    verify(g)
    x = special_rows(dtype, 1).to(DEVICE)
    inputs = [x] + [special_rows(dtype, 2).flip(0).to(DEVICE) for _ in g.inputs[1:]]
    exe = TritonExecutable(g)
    assert all(k.members for k in exe.partition.kernels) and not exe.partition.calls, exe.partition.describe()
    got = exe(inputs)
    want = run_graph(g, inputs)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_same_nonfinite(a, b, TOL[dtype], f"{case} output {i} ({g.outputs[i].name})")
    assert sym("R") in g.inputs[0].type.free_symbols()
