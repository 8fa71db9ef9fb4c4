"""Op traits: declared on define_op, listed by ops_with, checked against what each trait promises."""

from __future__ import annotations

import pytest
import sympy
import torch

from membound.ir import Graph, TensorType, all_ops, get_op
from membound.ir.ops import TRAITS, define_op, ops_with
from membound.ir.types import B, S


def test_trait_sets() -> None:
    assert ops_with("commutative") == {"add", "mul", "maximum", "minimum", "eq", "ne", "logical_and", "logical_or",
                                       "bitwise_and", "bitwise_or"}
    assert ops_with("row_reduction") == {"sum", "mean", "amax", "amin", "softmax", "log_softmax", "cumsum",
                                         "rms_norm", "layer_norm"}
    assert ops_with("source") == {"constant", "full", "arange"}
    assert ops_with("sink") == {"cache_write"}
    assert ops_with("view") == {n for n, od in all_ops().items() if od.kind == "view"}
    assert {"embedding", "index", "gather", "index_select"} <= ops_with("gather")
    assert {"linear", "matmul", "attention", "quant_linear"} <= ops_with("tensor_core")
    assert "add" not in ops_with("tensor_core") and "softmax" not in ops_with("tensor_core")
    assert get_op("linear").eager_class == "gemv" and get_op("softmax").eager_class == "softmax"


def test_every_elementwise_op_is_positionwise_and_layer_norm_only_over_one_dim() -> None:
    for name, od in all_ops().items():
        if od.kind == "elementwise":
            assert od.is_positionwise({}), name
    ln = get_op("layer_norm")
    assert ln.is_positionwise({"ndim": 1}) and not ln.is_positionwise({"ndim": 2})
    assert not get_op("softmax").is_positionwise({"dim": -1})  # a row op, but its result mixes the row


@pytest.mark.parametrize("name", sorted(ops_with("commutative")))
def test_commutative_ops_commute(name: str) -> None:
    od = get_op(name)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-3, 4, (3, 5), generator=g)
    b = torch.randint(-3, 4, (5,), generator=g)
    if name.startswith("logical") or name in ("eq", "ne"):
        a, b = a.float(), b.float()
    elif name.startswith("bitwise"):
        pass
    else:
        a, b = a.float() + 0.5, b.float() - 0.25
    x, y = od.reference(a, b), od.reference(b, a)
    assert x.dtype == y.dtype and torch.equal(x, y)
    ta, tb = TensorType(a.dtype, (3, 5)), TensorType(b.dtype, (5,))
    assert od.infer_types([ta, tb], {}) == od.infer_types([tb, ta], {})


@pytest.mark.parametrize("name", sorted(ops_with("gather")))
def test_gather_names_an_input(name: str) -> None:
    od = get_op(name)
    assert 0 <= od.gather < len(od.inputs)


def test_lift_adds_a_leading_dim_that_the_op_leaves_alone() -> None:
    """For every op with a ``lift`` hook: running the lifted op on stacked inputs equals stacking the
    op's results (the meaning of "attributes that follow a new leading dim")."""
    cases = {
        "unsqueeze": {"dim": 1}, "squeeze": {"dims": (1,)}, "transpose": {"dim0": 0, "dim1": 2},
        "permute": {"dims": (2, 0, 1)}, "slice": {"dim": 2, "start": 1, "end": 4, "step": 2},
        "select": {"dim": 0, "index": 1}, "split": {"dim": 2, "sizes": (2, 3)},
        "softmax": {"dim": 2, "dtype": None}, "log_softmax": {"dim": -1, "dtype": None},
        "cumsum": {"dim": 0, "dtype": None}, "sum": {"dims": (), "keepdim": False, "dtype": None},
        "mean": {"dims": (2,), "keepdim": True, "dtype": None}, "amax": {"dims": (0, 2), "keepdim": False},
        "amin": {"dims": (-1,), "keepdim": False}, "reshape": {"shape": (2, 5)},
        "expand": {"shape": (2, 4, 5)}, "cat": {"dim": 1},
    }
    assert set(cases) == ops_with("lift"), "a new op with a lift hook needs a case here"
    g = torch.Generator().manual_seed(0)
    for name, attrs in cases.items():
        od = get_op(name)
        # every row of the lifted input is [2, 1, 5]; four rows
        xs = [torch.randn(4, 2, 1, 5, generator=g) for _ in range(2 if name == "cat" else 1)]
        attrs = od.normalize_attrs(attrs)
        rank = xs[0].dim() - 1
        lifted = od.lift(dict(attrs), rank, 4)
        got = od.reference(*xs, **{k: (tuple(int(d) for d in v) if k == "shape" else v) for k, v in lifted.items()})
        per_row = [od.reference(*[x[i] for x in xs], **attrs) for i in range(4)]
        if isinstance(got, (tuple, list)):
            for k, part in enumerate(got):
                assert torch.allclose(part, torch.stack([r[k] for r in per_row])), name
        else:
            assert torch.allclose(got, torch.stack(per_row)), name


def test_lift_of_reshape_and_expand_puts_the_new_dim_first() -> None:
    assert get_op("reshape").lift({"shape": (S, 4)}, 2, B) == {"shape": (B, S, 4)}
    assert get_op("permute").lift({"dims": (1, 0)}, 2, B) == {"dims": (0, 2, 1)}
    assert get_op("sum").lift({"dims": (), "keepdim": False, "dtype": None}, 2, B)["dims"] == (1, 2)


def test_define_op_checks_traits() -> None:
    with pytest.raises(ValueError, match="only a binary op can be commutative"):
        define_op("_bad_commutative", inputs=("x",), kind="elementwise", infer=lambda x: x, reference=lambda x: x,
                  commutative=True)
    with pytest.raises(ValueError, match="gather=2 is not an input position"):
        define_op("_bad_gather", inputs=("x", "i"), kind="index", infer=lambda x, i: i, reference=lambda x, i: x,
                  gather=2)
    with pytest.raises(ValueError, match="unknown op trait"):
        ops_with("pure")
    assert "lift" in TRAITS and "view" in TRAITS


def test_every_view_has_an_index_map() -> None:
    """The Triton backend folds every op with the view trait into index arithmetic."""
    from membound.backends.triton.indexing import index_var, view_input_index

    for name in sorted(ops_with("view")):
        graph = Graph("v")
        x = graph.add_input("x", TensorType(torch.float32, (2, 6, 4)))
        attrs = {"reshape": {"shape": (2, 24)}, "expand": {"shape": (3, 2, 6, 4)}, "permute": {"dims": (2, 0, 1)},
                 "transpose": {"dim0": 0, "dim1": 1}, "unsqueeze": {"dim": 0}, "squeeze": {"dims": ()},
                 "slice": {"dim": 1, "start": 1, "end": 5, "step": 2}, "select": {"dim": 1, "index": 2},
                 "split": {"dim": 1, "sizes": (2, 4)}}[name]
        node = graph.create_node(name, [x], attrs)
        r = node.results[0]
        idx = tuple(index_var(f"i{k}") for k in range(r.rank))
        mapped = view_input_index(node, r, idx)
        assert len(mapped) == 3 and all(isinstance(e, sympy.Expr) for e in mapped), name


def test_reduces_names_the_mixed_dims() -> None:
    assert ops_with("row_reduction") <= ops_with("reduces")
    assert {"argmax", "topk", "sort"} <= ops_with("reduces")
    assert get_op("sum").reduces({"dims": (), "keepdim": False, "dtype": None}, 3) == (0, 1, 2)
    assert get_op("amax").reduces({"dims": (-1, 0), "keepdim": False}, 3) == (0, 2)
    assert get_op("softmax").reduces({"dim": -1, "dtype": None}, 4) == (3,)
    assert get_op("argmax").reduces({"dim": None, "keepdim": False}, 2) == (0, 1)
    assert get_op("layer_norm").reduces({"ndim": 2, "eps": 1e-5}, 3) == (1, 2)
    assert get_op("rms_norm").reduces({"eps": 1e-5}, 3) == (2,)
    assert get_op("add").reduces is None and get_op("linear").reduces is None


# (linear_attention and its in-place form take inputs of several shapes: their own test below)
@pytest.mark.parametrize("name", sorted(ops_with("reduces") - {"topk", "sort", "linear_attention",
                                                               "linear_attention_state"}))
def test_reduces_matches_the_reference(name: str) -> None:
    """Changing input 0 along a dim the op does not reduce leaves the other slices' results alone."""
    od = get_op(name)
    attrs = od.normalize_attrs({"dims": (1,), "keepdim": True} if "dims" in od.attrs else
                               {"dim": 1} if "dim" in od.attrs else {"eps": 1e-5} if "eps" in od.attrs else {})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, generator=g)
    mixed = od.reduces(attrs, 3)
    y = x.clone()
    y[0] += 1.0  # a change confined to index 0 of dim 0
    n = sum(not i.startswith("*") and not i.endswith("?") for i in od.inputs)  # (linear_scan: x as a and b)
    a, b = od.reference(*[x] * n, **attrs), od.reference(*[y] * n, **attrs)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    if 0 in mixed:
        return
    assert torch.equal(a[1:], b[1:]), name  # dim 0 is not mixed: rows 1.. are untouched


def test_linear_attention_mixes_only_its_dim() -> None:
    """``linear_attention`` (inputs of several shapes, so not in the test above) mixes dim 1 of q [3, 4, 5, 2] alone:
    a change to every input at index 0 of dim 0 leaves rows 1.. of y and of the state alone, and one at the last
    token changes no earlier token's y."""
    od = get_op("linear_attention")
    attrs = od.normalize_attrs({"dim": 1, "delta": True})
    assert od.reduces(attrs, 4) == (1,) and get_op("linear_attention_state").reduces(attrs, 4) == (1,)
    g = torch.Generator().manual_seed(0)
    ins = [torch.randn(3, 4, 5, 2, generator=g), torch.rand(3, 4, 5, generator=g),
           torch.randn(3, 4, 5, 2, generator=g), torch.randn(3, 4, 5, 6, generator=g), torch.rand(3, 4, 5, generator=g)]
    y, state = od.reference(*ins, **attrs)
    for at in ((0,), (slice(None), 3)):
        changed = [x.clone() for x in ins]
        for x in changed:
            x[at] += 1.0
        y2, state2 = od.reference(*changed, **attrs)
        if at == (0,):
            assert torch.equal(y[1:], y2[1:]) and torch.equal(state[1:], state2[1:])
            assert not torch.equal(y[0], y2[0])
        else:
            assert torch.equal(y[:, :3], y2[:, :3]) and not torch.equal(y[:, 3], y2[:, 3])
