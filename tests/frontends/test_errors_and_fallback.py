"""What the frontends say when they cannot capture, the explicit torch fallback, and the fx frontend."""

from __future__ import annotations

import pytest
import torch

from membound.backends.reference import run_graph
from membound.frontends import CaptureError, UnsupportedOpError, capture_export, capture_fx
from membound.ir import parse, print_graph, structurally_equal, verify


class Det(torch.nn.Module):
    """Calls an op the table does not map (linalg_det) inside a named submodule."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(x.reshape(x.shape[0], x.shape[1], 2, 2)) * 2


class WithDet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 4)
        self.block = Det()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.proj(x)).softmax(-1)


def test_unsupported_op_error_names_op_module_line_and_fallback() -> None:
    with pytest.raises(UnsupportedOpError) as e:
        capture_export(WithDet().eval(), (torch.randn(2, 5, 8),))
    msg = str(e.value)
    assert "aten.linalg_det.default" in msg
    assert "block (Det)" in msg
    assert "test_errors_and_fallback.py" in msg and "torch.linalg.det(x.reshape" in msg
    assert 'fallback="torch"' in msg
    assert isinstance(e.value, CaptureError)


def test_torch_fallback_emits_torch_call_with_correct_results() -> None:
    torch.manual_seed(0)
    model = WithDet().eval()
    x = torch.randn(2, 5, 8)
    cap = capture_export(model, (x,), fallback="torch")
    verify(cap.graph)
    assert cap.graph.count("torch_call") == 1
    call = next(n for n in cap.graph.nodes if n.op == "torch_call")
    assert call.attrs["target"] == "aten::linalg_det.default"
    assert [str(d) for d in call.result.shape] == ["B", "S"]
    assert structurally_equal(parse(print_graph(cap.graph)), cap.graph)
    for shape in [(2, 5, 8), (3, 4, 8)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = model(x)
        got = cap.unflatten_outputs(run_graph(cap.graph, cap.flatten_inputs((x,))))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_model_raising_during_capture_is_a_capture_error() -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("weights not loaded")

    with pytest.raises(CaptureError) as e:
        capture_export(Broken(), (torch.randn(2, 3),))
    assert "Broken" in str(e.value) and "weights not loaded" in str(e.value)
    assert isinstance(e.value.__cause__, RuntimeError)


def test_number_computed_from_data_as_output_is_refused_with_its_path() -> None:
    class Stats(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict:
            return {"y": x * 2, "total": x.sum().item()}

    with pytest.raises(CaptureError) as e:
        capture_export(Stats(), (torch.randn(2, 3),))
    assert "['total']" in str(e.value) and ".item()" in str(e.value)


def test_sizes_of_the_inputs_are_outputs_computed_per_call() -> None:
    """A size the model returns (a Dynamo subgraph hands the code after its break ``b, t`` so) is computed from each
    call's input shapes, not baked in; a count only the graph knows (a ``nonzero``'s) is refused, naming the output."""
    cap = capture_export(lambda x: (x + 1, x.shape[0] * x.shape[1], x.shape[1] - 1), (torch.randn(2, 3),))
    assert len(cap.graph.outputs) == 1
    for shape in [(2, 3), (4, 5)]:
        x = torch.randn(*shape)
        xs = cap.flatten_inputs((x,))
        y, n, m = cap.unflatten_outputs(run_graph(cap.graph, xs), xs)
        assert (n, m) == (shape[0] * shape[1], shape[1] - 1)
        torch.testing.assert_close(y, x + 1)
    with pytest.raises(ValueError, match="returns sizes"):
        cap.unflatten_outputs(run_graph(cap.graph, xs))
    with pytest.raises(CaptureError) as e:
        capture_export(lambda x: (x + 1, x.nonzero().shape[0]), (torch.randn(2, 3),), fallback="torch")
    assert "output[1]" in str(e.value) and "sizes of its inputs" in str(e.value)


def test_none_and_constant_outputs_are_kept() -> None:
    cap = capture_export(lambda x: {"y": x.exp(), "aux": None, "k": 3, "tag": "hi"}, (torch.randn(2, 3),))
    x = torch.randn(4, 5)
    out = cap.unflatten_outputs(run_graph(cap.graph, cap.flatten_inputs((x,))))
    assert out["aux"] is None and out["k"] == 3 and out["tag"] == "hi"
    torch.testing.assert_close(out["y"], x.exp())
    assert len(cap.graph.outputs) == 1


def test_non_tensor_inputs_are_specialised() -> None:
    def fn(x: torch.Tensor, scale: float, mode: str = "add") -> torch.Tensor:
        return x * scale + 1 if mode == "add" else x * scale

    x = torch.randn(2, 3)
    cap = capture_export(fn, (x, 0.5), {"mode": "add"})
    assert cap.constants == {1: 0.5, 2: "add"}
    assert cap.matches((torch.randn(5, 4), 0.5), {"mode": "add"})
    assert "0.25" in cap.mismatch((x, 0.25), {"mode": "add"})
    assert "mode" in cap.mismatch((x, 0.5), {"mode": "mul"})
    torch.testing.assert_close(run_graph(cap.graph, cap.flatten_inputs((x, 0.5), {"mode": "add"}))[0], x * 0.5 + 1)


def test_fx_frontend_traces_plain_modules() -> None:
    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = torch.nn.Linear(6, 12)
            self.norm = torch.nn.LayerNorm(12)
            self.down = torch.nn.Linear(12, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.down(torch.nn.functional.gelu(self.norm(self.up(x))))

    torch.manual_seed(0)
    model = MLP().eval()
    cap = capture_fx(model, (torch.randn(2, 5, 6),))
    verify(cap.graph)
    assert cap.graph.name == "MLP"
    assert cap.graph.tensors["up.weight"] is model.up.weight
    x = torch.randn(3, 7, 6)
    with torch.no_grad():
        torch.testing.assert_close(run_graph(cap.graph, cap.flatten_inputs((x,)))[0], model(x), rtol=1e-5, atol=1e-6)


def test_fx_frontend_failure_points_to_export() -> None:
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x  # Python branch on a tensor: symbolic_trace cannot follow it

    with pytest.raises(CaptureError) as e:
        capture_fx(DataDependent(), (torch.randn(2, 3),))
    assert "symbolic_trace" in str(e.value) and "capture_export" in str(e.value)


def test_a_rule_the_ir_rejects_falls_back_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mapped op whose IR op refuses the operands: an error without fallback; with fallback="torch" the
    rule's partial nodes are removed and the op becomes one torch_call."""
    from membound.frontends import aten_table

    def bad_rule(t, a):  # type: ignore[no-untyped-def]
        t.emit("neg", a.self)  # partial work that must be undone
        return t.emit("matmul", a.self, a.self)  # rank-1 operands: the IR's matmul rejects them

    monkeypatch.setitem(aten_table.TABLE, torch.ops.aten.cos.default, bad_rule)
    x = torch.randn(6)
    with pytest.raises(UnsupportedOpError, match="rejects the translated operands"):
        capture_export(lambda v: v.cos() + 1, (x,))
    cap = capture_export(lambda v: v.cos() + 1, (x,), fallback="torch")
    verify(cap.graph)
    assert cap.graph.ops() == ["torch_call", "constant", "add"]
    torch.testing.assert_close(run_graph(cap.graph, [x])[0], x.cos() + 1)



class Regions(torch.nn.Module):
    """A grad-mode region and an autocast-off region inside forward: torch.export wraps the first in a higher-order
    op (transformers 4.x's rotary embedding under ``@torch.no_grad()`` exports so)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            y = x * self.w
        with torch.autocast("cpu", enabled=False):
            z = y.exp()
        return z + 1


class AutocastOn(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return x @ x.T


def test_grad_mode_regions_translate_inline_and_autocast_on_is_refused() -> None:
    """``wrap_with_set_grad_enabled`` changes no value at inference: its body is translated in place (numerics equal
    eager's at another batch size); autocast turned on changes dtypes: refused, naming the op and what to do."""
    model = Regions()
    cap = capture_export(model, (torch.randn(2, 4),))
    assert [n.op for n in cap.graph.nodes] == ["mul", "exp", "constant", "add"], cap.graph
    x = torch.randn(3, 4)
    torch.testing.assert_close(cap.unflatten_outputs(run_graph(cap.graph, cap.flatten_inputs((x,)))), model(x))
    with pytest.raises(UnsupportedOpError, match="wrap_with_autocast: an autocast region with autocast enabled"):
        capture_export(AutocastOn(), (torch.randn(2, 4),))


class _ExpertsHit(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in (x > 0).any(0).nonzero():  # the experts hit: a loop whose trip count is data
            out = out + x[:, int(e)].unsqueeze(-1)
        return out


def test_a_data_dependent_loop_names_its_line_and_what_to_do() -> None:
    with pytest.raises(CaptureError) as e:
        capture_export(_ExpertsHit(), (torch.randn(3, 4),))
    msg = str(e.value)
    assert "test_errors_and_fallback.py:" in msg and "`for e in (x > 0).any(0).nonzero():" in msg, msg
    assert "fixed structure" in msg and 'torch.compile(model, backend="membound")' in msg, msg
    import membound.dynamo_backend  # noqa: F401  (the advice holds: the backend compiles around the loop)

    torch._dynamo.reset()
    x = torch.randn(3, 4)
    torch.testing.assert_close(torch.compile(_ExpertsHit(), backend="membound")(x), _ExpertsHit()(x))
