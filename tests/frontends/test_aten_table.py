"""One small function per ATen rule family, captured once with torch.export and run with the reference
backend at the capture's sizes and at other sizes (same capture), compared with eager torch.

fp32 throughout: results must agree to 1e-5 (relative to the output's scale); integer and bool
results exactly.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from membound.backends.reference import run_graph
from membound.frontends import UnsupportedOpError, capture_export
from membound.ir import verify


def _run(cap: Any, args: tuple) -> Any:
    return cap.unflatten_outputs(run_graph(cap.graph, cap.flatten_inputs(args)))


def _close(got: Any, want: Any) -> None:
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _close(g, w)
        return
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    if want.dtype.is_floating_point:
        scale = want.abs().max().clamp_min(1.0)
        assert ((got - want).abs().max() / scale) < 1e-5, (got, want)
    else:
        assert torch.equal(got, want), (got, want)


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape) + 0.1  # never all-zero


# each case: (id, fn, inputs at the capture sizes, inputs at other sizes)
CASES: list[tuple[str, Callable[..., Any], Callable[[int, int], tuple]]] = [
    ("binary_scalar", lambda x: ((x + 1) * 2.5 - x / 3 + 2 ** x - (1 - x), torch.add(x, x.exp(), alpha=2),
                                 torch.sub(x, 1, alpha=3), torch.rsub(x, x.cos(), alpha=0.5)),
     lambda b, s: (_x(b, s, 4),)),
    ("int_float_promotion", lambda i: (i * 0.5, i + 1, i // 2, i % 3, torch.floor_divide(i, 3)),
     lambda b, s: (torch.randint(-9, 9, (b, s)),)),
    ("compare_logic", lambda x: ((x > 0) & (x < 1), (x >= 0.5) | (x == x), x != 0.3, ~(x <= 0)),
     lambda b, s: (_x(b, s),)),
    ("compare_aliases", lambda x: (torch.greater(x, 0), torch.greater_equal(x, (0.5 - x)), torch.less(x, 0.2),
                                   torch.less_equal(x, x.tanh()), torch.not_equal(x, (0.5 - x)),
                                   torch.not_equal(x, 0.3), torch.greater(x, x.tanh()), torch.less(x, x.tanh()),
                                   torch.greater_equal(x, 0.1), torch.less_equal(x, -0.1)),
     lambda b, s: (_x(b, s),)),
    ("arith_aliases", lambda x: (torch.multiply(x, x.cos()), torch.multiply(x, 2.5), torch.subtract(x, x.sin(), alpha=2),
                                 torch.subtract(x, 1.5), torch.divide(x, x.exp()), torch.divide(x, 4),
                                 torch.true_divide(x, x.exp()), torch.true_divide(x, 3), torch.negative(x),
                                 torch.absolute(x)),
     lambda b, s: (_x(b, s),)),
    ("any_all", lambda x: ((x > 0).any(0), (x > 0).any(-1, keepdim=True), x.any(), (x > -1).all(1), x.all(),
                           torch.all(x > 0.5, dim=0, keepdim=True), (x > 0).any(dim=(0, 1))),
     lambda b, s: (_x(b, s) * (torch.rand(b, s) > 0.3),)),
    ("one_hot", lambda i: (torch.nn.functional.one_hot(i, 5), torch.nn.functional.one_hot(i[0], num_classes=7) * 2),
     lambda b, s: (torch.randint(0, 5, (b, s)),)),
    ("unary", lambda x: (x.exp(), x.abs().sqrt(), x.abs().rsqrt(), x.tanh(), x.sigmoid(), x.relu(), x.sin(),
                         x.cos(), torch.nn.functional.silu(x), torch.nn.functional.gelu(x, approximate="tanh"),
                         x.abs().log(), x.reciprocal(), x.floor(), torch.erf(x), -x),
     lambda b, s: (_x(b, s),)),
    ("where_masked_fill_clamp", lambda x: (torch.where(x > 0, x, 0.0), torch.where(x > 0, 1.0, x),
                                           x.masked_fill(x < 0, -1e9), x.clamp(-0.5, 0.5), x.clamp_min(0.1),
                                           torch.maximum(x, x * 0.5), torch.minimum(x, x.new_tensor(0.2))),
     lambda b, s: (_x(b, s),)),
    ("reductions", lambda x: (x.sum(-1), x.mean((0, 2), keepdim=True), x.amax(1), x.argmax(-1), x.max(dim=1),
                              x.softmax(-1), torch.log_softmax(x, 1), (x > 0).sum(-1), x.sum()),
     lambda b, s: (_x(b, s, 5),)),
    ("cumsum_diff", lambda i: (i.cumsum(-1), torch.diff(i, dim=-1), torch.diff(i > 0, dim=1),
                               torch.diff(i, prepend=i[:, :1])), lambda b, s: (torch.randint(0, 5, (b, s)),)),
    ("views", lambda x: (x.view(x.shape[0], -1), x.reshape(-1, 4), x.transpose(0, 1), x.permute(2, 0, 1),
                         x.unsqueeze(1).expand(-1, 3, -1, -1), x[:, None].squeeze(1), x.flatten(1),
                         x.t() if x.dim() == 2 else x.mT),
     lambda b, s: (_x(b, s, 4),)),
    ("repeat_interleave", lambda x: (x.repeat_interleave(3, dim=0), x.repeat_interleave(2, dim=-1),
                                     x.repeat_interleave(2)),
     lambda b, s: (_x(b, s, 4),)),
    ("square", lambda x: (x.square(), torch.square(x * 3), (x > 0).square()), lambda b, s: (_x(b, s, 4),)),
    ("repeat", lambda x: (x.repeat(2, 1, 3), x.repeat(1, 2, 1, 1), x[0].repeat(3, 1) * 1.5),
     lambda b, s: (_x(b, s, 4),)),
    ("slicing", lambda x: (x[:, 1:], x[:, -2:], x[:, :-1], x[..., 1:3], x[:, ::2], x[:, -1], x[1], x[:, 2:100],
                           x.narrow(1, 1, 2)),
     lambda b, s: (_x(b, s, 4),)),
    ("cat_stack_split", lambda x: (torch.cat([x, x * 2], -1), torch.stack([x, -x], 1), x.split(3, dim=-1),
                                   x.chunk(2, dim=-1), x.split([1, 4, 2], dim=-1), x.unbind(1)),
     lambda b, s: (_x(b, 3, 7),)),
    ("matmuls", lambda x, w, v: (x @ w, torch.addmm(v, x[0], w), torch.addmm(v, x[0], w, beta=0.5, alpha=2), x[0] @ v, v @ w, torch.bmm(x, w.expand(x.shape[0], -1, -1)),
                                 torch.nn.functional.linear(x, w.T, v)),
     lambda b, s: (_x(b, s, 4), _x(4, 4), _x(4))),
    ("indexing", lambda x, i: (x[i], x[:, i], x[i, i % x.shape[1]], torch.gather(x, 1, i[None].expand(x.shape[0], -1) % x.shape[1]),
                               x.index_select(0, i % x.shape[0]), x.index_put((i % x.shape[0],), x[0] * 0 + 7.0)),
     lambda b, s: (_x(b + 3, s + 3), torch.randint(0, 2, (3,)))),
    ("creation", lambda x: (torch.zeros_like(x), torch.ones(x.shape[0], 3), torch.full((2, x.shape[1]), 1.5),
                            x.new_ones(x.shape[1], dtype=torch.bool), torch.arange(x.shape[1]),
                            torch.arange(1, x.shape[0] + 1), torch.arange(0, 7, 2), torch.full_like(x, -2.0),
                            torch.empty_like(x).fill_(3.0)),
     lambda b, s: (_x(b, s),)),
    ("einsum", lambda x, w: (torch.einsum("bsd,ed->bse", x, w), torch.einsum("bsd->dbs", x),
                             torch.einsum("bsd,bsd->b", x, x), torch.einsum("bsd,de->be", x, w.T),
                             torch.einsum("bsd,ed->bes", x, w)),
     lambda b, s: (_x(b, s, 4), _x(3, 4))),
    ("routing", lambda x: (x.topk(2, dim=-1), x.sort(dim=-1, descending=True), torch.histc(x, bins=5, min=-2, max=2),
                           x.argsort(-1)),
     lambda b, s: (_x(b, s + 2),)),
    ("layer_norm_sdpa", lambda q, kv: (torch.nn.functional.layer_norm(q, (q.shape[-1],)),
                                       torch.nn.functional.scaled_dot_product_attention(q, kv[:, :1], kv[:, 1:],
                                                                                        is_causal=True),
                                       torch.nn.functional.scaled_dot_product_attention(
                                           q, kv[:, :1], kv[:, 1:], enable_gqa=True, scale=0.3,
                                           attn_mask=torch.ones(q.shape[-2], q.shape[-2]).tril().bool())),
     lambda b, s: (_x(b, 2, s, 8), _x(b, 2, s, 8))),
    ("tril_triu_rms_norm", lambda x, w: (x.tril(), x.triu(1), x.tril(-1),
                                         torch.nn.functional.rms_norm(x, (x.shape[-1],), w, eps=1e-6)),
     lambda b, s: (_x(b, s, 4), _x(4))),
    ("to_dtype", lambda x: (x.to(torch.float64), x.to(torch.int32), x.float(), x.to("cpu"), x.type_as(x > 0),
                            x.contiguous(), x.clone(), x.detach()),
     lambda b, s: (_x(b, s) * 4,)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rule_family_matches_eager(case: tuple) -> None:
    _, fn, make = case
    torch.manual_seed(0)
    args = make(2, 5)
    cap = capture_export(fn, args)
    verify(cap.graph)
    with torch.no_grad():
        _close(_run(cap, args), fn(*args))
        other = make(3, 6)
        assert cap.matches(other), cap.mismatch(other)
        _close(_run(cap, other), fn(*other))


def test_inplace_ops_become_functional() -> None:
    def fn(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        y = x * 2
        y.add_(1)
        y /= y.sum(-1, keepdim=True)
        y.masked_fill_(y > 0.3, 0.3)
        z = torch.zeros_like(i)
        z.index_put_((i,), torch.arange(i.shape[0]))  # HF Mixtral's inverse permutation
        return y, z

    x, i = _x(2, 5), torch.randperm(6)
    cap = capture_export(fn, (x, i))
    verify(cap.graph)
    _close(_run(cap, (x, i)), fn(x, i))
    x2, i2 = _x(4, 3), torch.randperm(9)
    _close(_run(cap, (x2, i2)), fn(x2, i2))


def test_write_through_a_view_translates_functionalized_or_is_refused_not_mistranslated() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        z = torch.zeros_like(x)
        z[:, 0] = 5.0  # fill_ on a select view of z; z is read afterwards: a select_scatter once functionalized
        return z + x

    cap = capture_export(fn, (_x(2, 5),))
    for x in (_x(2, 5), _x(3, 7)):
        _close(_run(cap, (x,)), fn(x))

    def strided(x: torch.Tensor) -> torch.Tensor:
        z = torch.zeros_like(x)
        z[:, ::2] = 5.0  # a strided slice: its scatter has no translation, so the write itself is refused
        return z + x

    with pytest.raises(UnsupportedOpError) as e:
        capture_export(strided, (_x(2, 5),))
    msg = str(e.value)
    assert "aten.fill_.Tensor" in msg and "value semantics" in msg and "no fallback" in msg
    assert "test_aten_table.py" in msg  # points at the function


def test_strided_writes_into_a_static_dim_translate_through_functionalization() -> None:
    """Qwen3.5's multimodal rotary frequencies: rows of a ``[3, B, S, D]`` table written into row 0 at every third
    slot of the static last dim (``g[..., 1:12:3] = f[1, ..., 1:12:3]``), row 0 read afterwards. Functionalized,
    those are ``slice_scatter``s with step 3, spliced from step-1 pieces. Also a single slot, a step whose last
    group would run past the end (2, 7, 12 of 16), and a step-2 write from a narrower dtype. Eager's values at the
    capture's size and another."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        f = x * 1.5
        g = f[0]
        for d, sl in ((1, slice(1, 12, 3)), (2, slice(2, 12, 3)), (1, slice(13, 16, 3)), (2, slice(2, 16, 5))):
            g[..., sl] = f[d, ..., sl]
        g[..., 3:9:2] = f[1, ..., 3:9:2].half()
        return torch.cat((g, g), dim=-1) + 1

    cap = capture_export(fn, (_x(3, 2, 5, 16),))
    assert "slice_scatter" not in str(cap.graph)
    for x in (_x(3, 2, 5, 16), _x(3, 1, 9, 16)):
        _close(_run(cap, (x,)), fn(x))


def test_an_op_refused_past_a_functionalized_write_is_the_one_reported() -> None:
    """Once functionalization gets past an in-place write, the op that still stops the capture (Qwen3.5's gated
    DeltaNet once stopped at its conv1d after the rotary write; here an erfinv) is what the error names, with a note
    that the write was not the obstacle."""
    class Block(torch.nn.Module):  # a module: torch.export records each line of its forward
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 1, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = x * 1.5
            g = f[0]
            g[..., 1:4:2] = f[1, ..., 1:4:2]
            return torch.erfinv(torch.tanh(g) * 0.5) + self.w.sum() + f.sum()

    with pytest.raises(UnsupportedOpError) as e:
        capture_export(Block(), (_x(2, 1, 4, 6),))
    assert "aten.erfinv" in str(e.value), str(e.value)
    assert any("functionalizing" in n for n in getattr(e.value, "__notes__", [])), e.value


def test_logsumexp_over_dims_equals_torch_with_infinite_rows() -> None:
    """``logsumexp`` (Granite-SWA's sink scale) over one dim, two dims kept, and an integer input; a row of -inf
    gives -inf and a row holding +inf gives inf, as torch's."""
    def fn(x: torch.Tensor, i: torch.Tensor) -> tuple:
        return torch.logsumexp(x, dim=-1), torch.logsumexp(x, dim=(0, 2), keepdim=True), torch.logsumexp(i, 1)

    x = _x(3, 5, 7)
    x[0, 1] = float("-inf")
    x[1, 2, 3] = float("inf")
    i = torch.randint(-3, 4, (2, 6))
    cap = capture_export(fn, (x, i))
    for got, want in zip(_run(cap, (x, i)), fn(x, i)):
        torch.testing.assert_close(got, want)
    x2 = _x(2, 9, 4)
    for got, want in zip(_run(cap, (x2, i)), fn(x2, i)):
        torch.testing.assert_close(got, want)


def test_vector_norms_and_constant_pads_equal_torch() -> None:
    """``linalg.vector_norm`` at ord 2 (default, over a dim and over all), 1 (two dims kept), inf, 0 and 3;
    ``F.pad`` with a value, pads before and after, and negative pads that crop (the symbolic S among them), at the
    capture's size and another; a reflect pad is refused by name."""
    def fn(x: torch.Tensor) -> tuple:
        norm = torch.linalg.vector_norm
        return (norm(x, dim=-1), norm(x, ord=1, dim=(0, 2), keepdim=True), norm(x, ord=float("inf"), dim=1),
                norm(x, ord=3, dim=-1), norm(x), norm(x, ord=0, dim=-1),
                F.pad(x, (1, 2)), F.pad(x, (0, 0, 2, -1), value=-3.5), F.pad(x, (-1, 1, 1, 0, 0, 1)))

    x = _x(3, 5, 7)
    x[0, 0, :3] = 0.0
    cap = capture_export(fn, (x,))
    for xs in (x, _x(2, 6, 7)):
        _close(_run(cap, (xs,)), fn(xs))
    with pytest.raises(UnsupportedOpError, match="mode='reflect'"):
        capture_export(lambda x: F.pad(x, (1, 1), mode="reflect"), (_x(2, 5, 7),))


class _SparseIndexMask(torch.nn.Module):
    """DeepSeek Sparse Attention's mask: the top ``min(8, L)`` keys of an indexer's scores kept, the rest masked
    (``ones.scatter(-1, topk.indices, False)`` then ``masked_fill``) on top of the causal mask."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        L = k.shape[2]
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        index = (q[:, 0] @ w @ k[:, 0].transpose(1, 2)).masked_fill(~causal, float("-inf"))
        top = index.topk(min(8, L), dim=-1).indices.to(torch.int32)
        drop = torch.ones(q.shape[0], L, L, dtype=torch.bool).scatter(-1, top.long(), False)
        bias = torch.zeros(L, L).masked_fill(~causal, float("-inf")).masked_fill(drop[:, None], float("-inf"))
        return torch.softmax(q @ k.transpose(2, 3) + bias, dim=-1) @ v


def test_a_top_k_keeping_every_key_scatters_a_constant_mask() -> None:
    """While ``min(8, L) = L`` the top-k indices are a permutation of every key: the scatter is ``full(False)``,
    taken under the range L <= 8 (a guard; the indexer is then dead code). Past 8 keys the capture does not match,
    and one taken there keeps the scatter and the top-k. Eager's values either way."""
    m = _SparseIndexMask()

    def args(s: int) -> tuple:
        return (_x(2, 3, s, 4), _x(2, 3, s, 4), _x(2, 3, s, 4), _x(4, 4))

    cap = capture_export(m, args(5))
    s = cap.graph.inputs[0].shape[2]
    assert cap.ranges[s] == (2, 8) and [str(g) for g in cap.guards] == [f"{s} <= 8"], (cap.ranges, cap.guards)
    assert cap.graph.count("scatter") == 0
    for n in (5, 8):
        xs = args(n)
        _close(_run(cap, xs), m(*xs))
    assert not cap.matches(args(9))
    long = capture_export(m, args(11))
    assert long.graph.count("scatter") == 1
    xs = args(11)
    _close(_run(long, xs), m(*xs))

    def wider(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # the top 5 of 10 slots: not every slot of x
        return torch.zeros_like(x).scatter(-1, y.topk(x.shape[-1], dim=-1).indices, 1.0)

    # (captured only: its indices may pass x's 5 slots, which eager would refuse at run time)
    assert capture_export(wider, (_x(2, 5), _x(2, 10)), dynamic=False).graph.count("scatter") == 1


def test_var_and_std_over_dims_with_corrections_equal_torch() -> None:
    def fn(x: torch.Tensor) -> tuple:
        return (x.var(1), x.std((0, 2)), torch.var(x, -1, correction=2, keepdim=True), x.std(),
                x.std(-1, keepdim=True, unbiased=False), torch.var(x, dim=1, correction=0))

    cap = capture_export(fn, (_x(2, 5, 9),))
    for xs in (_x(2, 5, 9), _x(3, 7, 9)):
        _close(_run(cap, (xs,)), fn(xs))


class _GaussianTopK(torch.nn.Module):
    """Gemma 3n's activation sparsity: a cutoff ``mean + std * Normal(0, 1).icdf(0.95)`` whose quantile is computed
    from a tensor literal (broadcasts, argument checks and ``erfinv``, none of them IR ops)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        target = torch.tensor(0.95, dtype=torch.float32, device=x.device)
        multiplier = torch.distributions.normal.Normal(0, 1).icdf(target).type(x.dtype)
        cutoff = x.mean(-1, keepdim=True) + x.std(-1, keepdim=True, unbiased=False) * multiplier
        return torch.relu(x - cutoff)


def test_ops_on_tensor_literals_alone_are_evaluated_at_capture() -> None:
    """Ops with no IR mapping whose inputs are tensor literals of the model's code only are evaluated at capture
    (``erfinv(2 * 0.95 - 1)`` becomes a constant, about 1.1631); the same op over a weight is still refused by name."""
    m = _GaussianTopK()
    cap = capture_export(m, (_x(2, 5, 9),))
    assert any(n.op == "constant" and abs(float(n.attrs["value"]) - 1.16309) < 1e-4 for n in cap.graph.nodes)
    for xs in (_x(2, 5, 9), _x(3, 4, 9)):
        _close(_run(cap, (xs,)), m(xs))

    class OnWeight(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.rand(9) * 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.erfinv(self.w)

    with pytest.raises(UnsupportedOpError, match="aten.erfinv"):
        capture_export(OnWeight(), (_x(2, 5, 9),))

    class Tables(torch.nn.Module):  # literals broadcast to tables: each folded result its own constant parameter
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = torch.broadcast_tensors(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[0.5], [2.0]]))
            return x * torch.erfinv(a * 0.2) + torch.erfinv(b * 0.1)

    cap = capture_export(Tables(), (_x(2, 3),), dynamic=False)
    assert sorted(p.name for p in cap.graph.params) == ["folded.broadcast_tensors.0", "folded.broadcast_tensors.1",
                                                         "folded.erfinv", "folded.erfinv_1"]
    xs = _x(2, 3)
    _close(_run(cap, (xs,)), Tables()(xs))


class _DepthwiseConvs(torch.nn.Module):
    """LFM2's short convolution (depthwise, kernel 3, padded by 2 and cut to the sequence, with a bias), one without
    padding or bias, and a ``[C, L]`` input with ``padding="valid"``."""

    def __init__(self) -> None:
        super().__init__()
        self.short = torch.nn.Conv1d(6, 6, 3, groups=6, padding=2)
        self.valid = torch.nn.Conv1d(6, 6, 4, groups=6, bias=False)

    def forward(self, x: torch.Tensor) -> tuple:
        return (self.short(x)[..., :x.shape[-1]], self.valid(x),
                F.conv1d(x[0], self.valid.weight, groups=6, padding="valid"))


def test_depthwise_conv1d_equals_torch_and_other_convolutions_are_refused() -> None:
    m = _DepthwiseConvs()
    cap = capture_export(m, (_x(2, 6, 9),))
    for xs in (_x(2, 6, 9), _x(3, 6, 13)):
        with torch.no_grad():
            _close(_run(cap, (xs,)), m(xs))
    dense = torch.nn.Conv1d(6, 4, 3)
    with pytest.raises(UnsupportedOpError, match="only a depthwise convolution"):
        capture_export(dense, (_x(2, 6, 9),))


def test_symbolic_shapes_are_named_after_the_first_input() -> None:
    cap = capture_export(lambda x, y: x.sum(-1, keepdim=True) * y.mean(-1, keepdim=True), (_x(2, 5, 3), _x(2, 1, 4)))
    x, y = cap.graph.inputs
    assert [str(d) for d in x.shape] == ["B", "S", "D0"]
    assert [str(d) for d in y.shape] == ["B", "1", "D1"]  # export specialises size-1 dims


def test_slice_bounds_use_the_ranges_torch_proved() -> None:
    def fn(x: torch.Tensor) -> tuple:
        return x[:, :5], x[:, 3:], x[:, -4:], x[:, 1:-1], x[:, x.shape[1] // 2:]

    cap = capture_export(fn, (_x(2, 7),))
    assert cap.ranges[cap.graph.inputs[0].shape[1]] == (5, None)  # x[:, :5] of a dynamic S guards S >= 5
    text = str(cap.graph)
    assert "Min" not in text and "Max" not in text, text  # S >= 5 makes every clamp provably a no-op
    x = _x(3, 9)
    _close(_run(cap, (x,)), fn(x))
    assert not cap.matches((_x(3, 4),))


def test_a_max_of_sizes_takes_the_captured_branch_under_a_narrowed_range() -> None:
    """MPT's ALiBi: a table of 12 keys sliced ``[max(0, 12 - S):]`` (``12 - Max(0, 12 - S)`` keys) added to
    scores over S keys broadcasts only where ``S <= 12``, as eager needs too: the add takes the branch the
    captured S selects (the slice reshaped to S keys), S's range becomes (2, 12) and the condition a guard; a call
    past 12 does not reuse the capture. Numerics equal eager's at 5 and 12 keys."""
    table = torch.randn(3, 1, 12)

    def fn(x: torch.Tensor) -> torch.Tensor:
        start = max(0, table.size(2) - x.shape[-1])
        return x + table[:, :, start:]

    cap = capture_export(fn, (_x(2, 3, 7, 7),))
    s = cap.graph.inputs[0].shape[-1]
    assert cap.ranges[s] == (2, 12), cap.ranges
    assert [str(g) for g in cap.guards] == [f"12 - {s} >= 0"], cap.guards
    for n in (5, 12):
        x = _x(2, 3, n, n)
        _close(_run(cap, (x,)), fn(x))
    assert cap.matches((_x(2, 3, 12, 12),)) and not cap.matches((_x(2, 3, 13, 13),))


def test_static_capture_has_no_symbols() -> None:
    cap = capture_export(lambda x: x.softmax(-1), (_x(2, 5),), dynamic=False)
    assert cap.graph.symbols() == set()
    assert cap.matches((_x(2, 5),)) and not cap.matches((_x(2, 6),))


def test_a_write_into_a_view_read_later_translates_through_functionalization() -> None:
    """``y = x.clone(); y[:, 1:3].copy_(...); y[:, :1] = ...`` writes through views of ``y`` that is read later
    (transformers 4.x's OPT / BLOOM / BioGPT masks): the translator refuses that in the exported program, and the
    capture retries the functionalized one, whose ``slice_scatter``s become slices and a ``cat``. Eager's values at
    the capture's size and another."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[:, 1:3].copy_(x[:, :2] * 2)
        y[:, :1] = 7.0
        return y + 1

    cap = capture_export(fn, (_x(2, 6),))
    assert cap.graph.count("cat") >= 1, cap.graph
    for x in (_x(2, 6), _x(3, 9)):
        _close(_run(cap, (x,)), fn(x))


def test_tensor_split_at_indices_and_in_sections_equals_torch() -> None:
    """``tensor_split`` at indices (what Mamba's ``torch.split`` with sizes becomes under export; a dynamic last dim)
    and in sections (ragged: 10 in 3 is 4, 3, 3) are slices tiling the dim; indices out of order are refused by
    name."""
    def fn(x: torch.Tensor) -> tuple:
        return *torch.tensor_split(x, [2, 5], dim=-1), *torch.tensor_split(x, [1], dim=1)

    cap = capture_export(fn, (_x(2, 7, 10),))
    for xs in (_x(2, 7, 10), _x(3, 5, 12)):
        _close(_run(cap, (xs,)), fn(xs))

    def sections(x: torch.Tensor) -> tuple:
        return torch.tensor_split(x, 3, dim=-1)

    cap = capture_export(sections, (_x(2, 7, 10),), dynamic=False)
    xs = _x(2, 7, 10)
    _close(_run(cap, (xs,)), sections(xs))

    def backwards(x: torch.Tensor) -> tuple:
        return torch.tensor_split(x, [5, 2], dim=-1)

    with pytest.raises(UnsupportedOpError, match="do not tile it"):
        capture_export(backwards, (_x(2, 7, 10),))


def test_a_pad_by_a_symbolic_amount_proven_nonnegative_joins_a_block_of_that_size() -> None:
    """Mamba-2's chunked scan pads the tokens to a multiple of its chunk: ``F.pad(x, (0, 0, 0, (4 - S % 4) % 4))``;
    the block is empty where S is already a multiple. An amount that may be negative (``S - 6``) is refused."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (0, 0, 0, (4 - x.shape[1] % 4) % 4), value=2.0)
        return padded.sum(1) + padded.shape[1]

    cap = capture_export(fn, (_x(2, 7, 3),))
    for xs in (_x(2, 7, 3), _x(3, 8, 3), _x(2, 13, 3)):
        _close(_run(cap, (xs,)), fn(xs))

    def shrink(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, x.shape[1] - 6))

    with pytest.raises(UnsupportedOpError, match="may be negative"):
        capture_export(shrink, (_x(2, 7, 3),))


def test_concatenate_is_cat() -> None:
    """``torch.concatenate`` (Zamba's hybrid layers) is the alias of ``cat`` export keeps as its own op."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.concatenate([x, 2 * x], dim=-1)

    cap = capture_export(fn, (_x(2, 5, 3),))
    assert [n.op for n in cap.graph.nodes].count("cat") == 1
    xs = _x(3, 4, 3)
    _close(_run(cap, (xs,)), fn(xs))
