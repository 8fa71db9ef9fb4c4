"""PassManager: running, records, failure reports, verification after each pass, the registry."""

from __future__ import annotations

import pytest
from pass_testing import parse_with_params

from membound.ir import Graph, print_graph
from membound.passes import PassContext, PassError, PassManager, get_pass, pass_name, register_pass
from membound.passes.constant_fold import ConstantFold

TEXT = """graph @f(%x: f32[B, 8]) params(%w: f32[4, 8], %unused: f32[3]) {
  %0 = linear(%x, %w) : f32[B, 4]
  %1 = linear(%x, %w) : f32[B, 4]
  %2 = exp(%x) : f32[B, 8]
  %3 = add(%0, %1) : f32[B, 4]
  return %3
}"""


def noop(graph: Graph, ctx: PassContext) -> bool:
    return False


def explode(graph: Graph, ctx: PassContext) -> bool:
    raise ValueError("boom")


def break_graph(graph: Graph, ctx: PassContext) -> bool:
    """A deliberately broken pass: makes a node read a value that is defined after it."""
    first, last = graph.nodes[0], graph.nodes[-1]
    first.replace_input(first.inputs[0], last.result)
    return True


def silent_edit(graph: Graph, ctx: PassContext) -> bool:
    """Edits the graph but claims it did not."""
    exp = next(n for n in graph.nodes if n.op == "exp")
    graph.erase_node(exp)
    return False


def test_runs_in_order_and_records_what_changed() -> None:
    g = parse_with_params(TEXT)
    pm = PassManager(["common-subexpression-elimination", noop, "dead-code-elimination"])
    assert pm.run(g) is g
    assert g.ops() == ["linear", "add"] and [p.name for p in g.params] == ["w"]
    recs = [(r.name, r.changed, r.nodes_before, r.nodes_after) for r in pm.records]
    assert recs == [("common-subexpression-elimination", True, 4, 3), ("noop", False, 3, 3),
                    ("dead-code-elimination", True, 3, 2)]
    assert "merged 1 duplicate node(s)" in pm.records[0].notes[0]
    assert all(r.seconds >= 0 for r in pm.records)
    assert "dead-code-elimination" in pm.summary()


def test_a_raising_pass_is_named_with_the_passes_before_it() -> None:
    g = parse_with_params(TEXT)
    pm = PassManager(["canonicalize", noop, explode, "dead-code-elimination"])
    with pytest.raises(PassError) as info:
        pm.run(g)
    err = info.value
    assert err.pass_name == "explode" and err.ran_before == ["canonicalize", "noop"]
    assert "pass 'explode' failed: raised ValueError: boom" in str(err)
    assert "passes that ran before it: canonicalize, noop" in str(err)
    assert isinstance(err.__cause__, ValueError)


def test_verification_after_each_pass_catches_a_broken_graph() -> None:
    g = parse_with_params(TEXT)
    with pytest.raises(PassError, match=r"pass 'break-graph' failed: left an invalid graph.*dominance") as info:
        PassManager(["dead-code-elimination", break_graph, noop]).run(g)
    assert info.value.ran_before == ["dead-code-elimination"]


def test_verification_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    PassManager([break_graph], verify=False).run(parse_with_params(TEXT))
    monkeypatch.setenv("MEMBOUND_VERIFY", "0")
    PassManager([break_graph]).run(parse_with_params(TEXT))
    with pytest.raises(PassError):  # an explicit verify=True wins over the environment
        PassManager([break_graph], verify=True).run(parse_with_params(TEXT))


def test_a_pass_that_lies_about_changing_is_caught() -> None:
    with pytest.raises(PassError, match="returned False .* but modified the graph"):
        PassManager([silent_edit]).run(parse_with_params(TEXT))


def test_a_pass_must_return_a_bool() -> None:
    with pytest.raises(PassError, match="must return True/False"):
        PassManager([lambda g, ctx: None]).run(parse_with_params(TEXT))


def test_an_invalid_input_graph_is_reported_before_any_pass() -> None:
    g = parse_with_params(TEXT)
    break_graph(g, PassContext())
    with pytest.raises(PassError, match="input graph is invalid before any pass ran"):
        PassManager([noop]).run(g)


def test_context_log_collects_notes_per_pass() -> None:
    ctx = PassContext()
    PassManager(["common-subexpression-elimination", "dead-code-elimination"]).run(parse_with_params(TEXT), ctx)
    assert ctx.log == ["common-subexpression-elimination: merged 1 duplicate node(s)",
                       "dead-code-elimination: removed 1 node(s) and 1 unused param(s)"]
    assert ctx.current_pass is None


def test_registry_names_options_and_errors() -> None:
    assert pass_name(get_pass("dead-code-elimination")) == "dead-code-elimination"
    fold = get_pass("constant-fold", max_elements=16)
    assert isinstance(fold, ConstantFold) and fold.max_elements == 16 and fold.name == "constant-fold"
    with pytest.raises(KeyError, match="no pass named 'nope'; registered passes: .*canonicalize"):
        get_pass("nope")
    with pytest.raises(TypeError, match="takes no options"):
        get_pass("dead-code-elimination", x=1)
    with pytest.raises(ValueError, match="kebab-case"):
        register_pass("Bad_Name")
    with pytest.raises(ValueError, match="already registered"):
        register_pass("canonicalize")(noop)
    with pytest.raises(TypeError, match="put an instance in the pipeline"):
        PassManager([ConstantFold])


def test_pass_names_of_unregistered_passes() -> None:
    def my_custom_pass(graph: Graph, ctx: PassContext) -> bool:
        return False

    class WithName:
        name = "with-name"

        def __call__(self, graph: Graph, ctx: PassContext) -> bool:
            return False

    assert pass_name(my_custom_pass) == "my-custom-pass"
    assert pass_name(WithName()) == "with-name"
    assert PassManager([my_custom_pass, WithName(), "canonicalize"]).names == [
        "my-custom-pass", "with-name", "canonicalize"]


def test_unchanged_graph_prints_identically() -> None:
    g = parse_with_params(TEXT)
    before = print_graph(g)
    PassManager([noop, noop]).run(g)
    assert print_graph(g) == before
