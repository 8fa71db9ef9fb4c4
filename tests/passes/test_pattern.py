"""The pattern language and the rewrite-to-fixpoint driver."""

from __future__ import annotations

from typing import Optional

import pytest
from pass_testing import check_numerics, parse_with_params

from membound.ir import Graph, Value, parse, print_graph, structurally_equal, verify
from membound.passes.pattern import (
    Alt,
    Any_,
    Const,
    Match,
    Opt,
    Pat,
    RewriteError,
    Rule,
    rewrite_to_fixpoint,
)

GRAPH = """graph @f(%x: f32[B, 8], %y: f32[B, 8]) {
  %one = constant() {value=1.0, dtype=f32} : f32[]
  %e = exp(%x) : f32[B, 8]
  %a = add(%one, %e) : f32[B, 8]
  %xf = cast(%x) {dtype=f64} : f64[B, 8]
  %sq = mul(%x, %x) : f32[B, 8]
  %xy = mul(%x, %y) : f32[B, 8]
  %tv, %ti = topk(%a) {k=2} : f32[B, 2], i64[B, 2]
  return %a, %xf, %sq, %xy, %tv
}"""


def first(pattern, g: Graph, name: str) -> Optional[dict[str, Value]]:
    for caps in pattern.matches(g.value(name), {}):
        return caps
    return None


@pytest.fixture
def g() -> Graph:
    return parse(GRAPH)


def test_op_inputs_and_captures(g: Graph) -> None:
    caps = first(Pat("exp", Any_("in"), name="out"), g, "e")
    assert caps is not None and caps["in"] is g.value("x") and caps["out"] is g.value("e")
    assert first(Pat("neg", Any_()), g, "e") is None                   # wrong op
    assert first(Pat(("neg", "exp"), Any_()), g, "e") is not None      # a tuple of ops
    assert first(Pat("exp"), g, "e") is None                           # arity must match exactly...
    assert first(Pat("exp", ...), g, "e") is not None                  # ...unless open with ...
    assert first(Any_("v"), g, "x") == {"v": g.value("x")}             # Any_ matches graph inputs too


def test_commutative_add_and_mul(g: Graph) -> None:
    # add(%one, %e) written as add(exp(x), 1): the operands are tried in both orders
    caps = first(Pat("add", Pat("exp", Any_("x")), Const(1.0, name="c")), g, "a")
    assert caps is not None and caps["c"] is g.value("one")
    # sub is not commutative; non-commutative patterns try the written order only
    assert first(Pat("add", Const(1.0), Pat("exp", Any_()), commutative=False), g, "a") is not None
    assert first(Pat("add", Pat("exp", Any_()), Const(1.0), commutative=False), g, "a") is None


def test_repeated_capture_must_bind_the_same_value(g: Graph) -> None:
    square = Pat("mul", Any_("v"), Any_("v"))
    assert first(square, g, "sq") == {"v": g.value("x")}
    assert first(square, g, "xy") is None


def test_opt_matches_with_and_without_the_wrapper(g: Graph) -> None:
    p = Opt("cast", Any_("x", lambda v: v.kind == "input"), name="c")
    with_cast = first(p, g, "xf")
    assert with_cast == {"c": g.value("xf"), "x": g.value("x")}
    assert first(p, g, "x") == {"x": g.value("x")}                     # no cast: still a match, no "c"


def test_attrs_and_predicates(g: Graph) -> None:
    assert first(Pat("cast", Any_(), attrs={"dtype": lambda d: d.is_floating_point}), g, "xf") is not None
    assert first(Pat("cast", Any_(), attrs={"missing": 1}), g, "xf") is None
    assert first(Pat("exp", Any_(), predicate=lambda n: n.results[0].rank == 3), g, "e") is None
    assert first(Const(2.0), g, "one") is None
    assert first(Const(lambda v: v > 0), g, "one") is not None


def test_alt_backtracks_into_later_alternatives(g: Graph) -> None:
    # the first alternative matches the op but fails deeper; the second one matches
    p = Alt(Pat("mul", Any_("v"), Pat("exp", Any_())), Pat("mul", Any_("v"), Any_("v")))
    assert first(p, g, "sq") == {"v": g.value("x")}
    assert Alt(Pat("mul", Any_()), Pat("exp", Any_())).root_ops() == {"mul", "exp"}
    assert Alt(Pat("mul", Any_()), Any_()).root_ops() is None


def test_one_use(g: Graph) -> None:
    # %e is used once (by %a); %a is used by topk and returned
    assert first(Pat("exp", Any_(), one_use=True), g, "e") is not None
    assert first(Pat("add", Any_(), Any_(), one_use=True), g, "a") is None


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
def exp_of_log(m: Match) -> Optional[Value]:
    return m["x"]


def test_rewrite_replaces_uses_and_erases_dead_nodes() -> None:
    text = """graph @f(%x: f32[B, 8]) {
      %l = log(%x) : f32[B, 8]
      %e = exp(%l) : f32[B, 8]
      %n = neg(%e) : f32[B, 8]
      return %n
    }"""
    g = parse(text)
    counts: dict[str, int] = {}
    # exp(log(x)) -> x
    assert rewrite_to_fixpoint(g, [Rule(Pat("exp", Pat("log", Any_("x"))), exp_of_log)], counts=counts)
    verify(g)
    assert g.ops() == ["neg"] and g.nodes[0].inputs[0] is g.inputs[0] and counts == {"exp-of-log": 1}


def test_callback_builds_nodes_and_declines_cleanly() -> None:
    text = """graph @f(%x: f32[B, 8]) {
      %0 = mul(%x, %x) : f32[B, 8]
      %1 = mul(%0, %x) : f32[B, 8]
      return %1
    }"""

    def square_to_pow(m: Match) -> Optional[Value]:
        two = m.builder.call("constant", value=2, dtype=m["x"].dtype)
        return m.builder.call("pow", m["x"], two)

    def build_then_decline(m: Match) -> Optional[Value]:
        m.builder.call("exp", m["x"])
        m.note("declined on purpose")
        return None

    g = parse(text)
    notes: list[str] = []
    # mul(x, x) -> pow(x, 2); the nodes built by a declining callback are removed again
    rules = [Rule(Pat("mul", Any_("x"), Any_("x")), build_then_decline),
             Rule(Pat("mul", Any_("x"), Any_("x")), square_to_pow)]
    assert rewrite_to_fixpoint(g, rules, notes=notes)
    verify(g)
    assert g.ops() == ["constant", "pow", "mul"]
    assert notes == ["build-then-decline: declined on purpose"]
    check_numerics(lambda graph, ctx: rewrite_to_fixpoint(graph, rules), text)


def test_rules_that_undo_each_other_are_reported_as_a_loop() -> None:
    g = parse("""graph @f(%x: f32[B, 8]) {
      %0 = neg(%x) : f32[B, 8]
      return %0
    }""")

    def neg_to_mul(m: Match) -> Optional[Value]:
        minus_one = m.builder.call("constant", value=-1.0, dtype=m["x"].dtype)
        return m.builder.call("mul", m["x"], minus_one)

    def mul_to_neg(m: Match) -> Optional[Value]:
        return m.builder.call("neg", m["x"])

    rules = [
        # neg(x) -> mul(x, -1)
        Rule(Pat("neg", Any_("x")), neg_to_mul),
        # mul(x, -1) -> neg(x)
        Rule(Pat("mul", Any_("x"), Const(-1.0)), mul_to_neg),
    ]
    with pytest.raises(RewriteError, match=r"rewrite loop.*\['mul-to-neg', 'neg-to-mul'\]"):
        rewrite_to_fixpoint(g, rules)


def test_a_rule_that_never_converges_hits_the_bound() -> None:
    g = parse("""graph @f(%x: f32[B, 8]) {
      %0 = exp(%x) : f32[B, 8]
      return %0
    }""")

    def grow(m: Match) -> Optional[Value]:
        # exp(x) -> exp(neg(neg(x))): a new graph every sweep, never a fixpoint
        return m.builder.call("exp", m.builder.call("neg", m.builder.call("neg", m["x"])))

    with pytest.raises(RewriteError, match=r"no fixpoint after 5 sweeps; rules still firing: \['grow'\]"):
        rewrite_to_fixpoint(g, [Rule(Pat("exp", Any_("x")), grow)], max_iterations=5)


def test_a_replacement_of_another_type_is_refused() -> None:
    g = parse("""graph @f(%x: f32[B, 8]) {
      %0 = cast(%x) {dtype=f16} : f16[B, 8]
      return %0
    }""")
    with pytest.raises(RewriteError, match=r"rule 'bad' would replace %0: f16\[B, 8\] with %x: f32\[B, 8\]"):
        rewrite_to_fixpoint(g, [Rule(Pat("cast", Any_("x")), lambda m: m["x"], name="bad")])


def test_no_match_means_no_change() -> None:
    g = parse_with_params(GRAPH)
    before = print_graph(g)
    assert rewrite_to_fixpoint(g, [Rule(Pat("exp", Pat("log", Any_("x"))), exp_of_log)]) is False
    assert print_graph(g) == before
    assert structurally_equal(g, parse(GRAPH))


def test_unknown_op_name_raises_when_the_pattern_is_built() -> None:
    """A misspelt op would silently never match; it fails where the rule is written instead."""
    with pytest.raises(ValueError, match="reshap"):
        Pat("reshap", Any_("x"))
    with pytest.raises(ValueError, match="softmx"):
        Pat(("softmax", "softmx"), Any_("x"))
    with pytest.raises(ValueError, match="no IR op"):
        Pat((), Any_("x"))
    assert Pat(("softmax", "log_softmax"), Any_("x")).ops == {"softmax", "log_softmax"}


def test_commutative_comes_from_the_op_trait() -> None:
    assert Pat("add", Any_("a"), Any_("b")).commutative
    assert not Pat("sub", Any_("a"), Any_("b")).commutative
    assert not Pat(("add", "sub"), Any_("a"), Any_("b")).commutative  # all of them must commute
