"""Instruments: DumpIR files (numbered, parse back), MEMBOUND_DUMP_IR, printing, timing; a custom pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from pass_testing import check_numerics, check_rewrite, check_unchanged, parse_with_params

from membound.ir import Graph, Value, parse, structurally_equal
from membound.passes import (
    DumpIR,
    PassContext,
    PassError,
    PassManager,
    PrintAfterAll,
    PrintAfterChange,
    Timing,
    default_pipeline,
    insert_after,
    pass_name,
)
from membound.passes.pattern import Any_, Match, Pat, Rule, rewrite_to_fixpoint

TEXT = """graph @f(%x: f32[B, 8]) params(%w: f32[8, 8]) {
  %0 = transpose(%w) {dim0=0, dim1=1} : f32[8, 8]
  %1 = matmul(%x, %0) : f32[B, 8]
  %2 = gelu(%1) : f32[B, 8]
  %3 = exp(%x) : f32[B, 8]
  return %2
}"""


def tanh_gelu(m: Match) -> Value:
    return m.builder.call("gelu", m["x"], approximate="tanh")


# gelu(x) {approximate="none"} -> gelu(x) {approximate="tanh"}
GELU_RULES = [Rule(Pat("gelu", Any_("x"), attrs={"approximate": "none"}), tanh_gelu)]


def approximate_gelu(graph: Graph, ctx: PassContext) -> bool:
    """A user's pass: the erf gelu becomes the cheaper tanh approximation."""
    return rewrite_to_fixpoint(graph, GELU_RULES)


def test_dump_ir_writes_numbered_files_that_parse_back(tmp_path: Path) -> None:
    g = parse_with_params(TEXT)
    PassManager(default_pipeline(), instruments=[DumpIR(tmp_path)]).run(g)
    names = sorted(p.name for p in tmp_path.iterdir())
    passes = [pass_name(p) for p in default_pipeline()]
    assert names == ["000-input.mir"] + [f"{i:03d}-{name}.mir" for i, name in enumerate(passes, start=1)]
    assert names[1:5] == ["001-canonicalize.mir", "002-constant-fold.mir",
                          "003-common-subexpression-elimination.mir", "004-dead-code-elimination.mir"]
    first = parse((tmp_path / "000-input.mir").read_text())
    assert structurally_equal(first, parse(TEXT))
    last = parse((tmp_path / names[-1]).read_text())
    assert structurally_equal(last, g)
    assert last.ops() == ["linear", "gelu"]
    for p in tmp_path.iterdir():
        parse(p.read_text())


def test_dump_ir_replaces_a_previous_run_and_keeps_other_files(tmp_path: Path) -> None:
    (tmp_path / "009-stale.mir").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    PassManager(["dead-code-elimination"], instruments=[DumpIR(tmp_path)]).run(parse_with_params(TEXT))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000-input.mir", "001-dead-code-elimination.mir",
                                                         "notes.txt"]


def test_membound_dump_ir_env_turns_dumping_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMBOUND_DUMP_IR", str(tmp_path / "dump"))
    PassManager(["canonicalize"]).run(parse_with_params(TEXT))
    assert sorted(p.name for p in (tmp_path / "dump").iterdir()) == ["000-input.mir", "001-canonicalize.mir"]


def test_context_dump_dir_turns_dumping_on(tmp_path: Path) -> None:
    PassManager(["canonicalize"]).run(parse_with_params(TEXT), PassContext(dump_dir=tmp_path))
    assert (tmp_path / "001-canonicalize.mir").exists()


def test_a_failing_pass_leaves_its_graph_in_the_dump(tmp_path: Path) -> None:
    def explode(graph: Graph, ctx: PassContext) -> bool:
        raise RuntimeError("boom")

    with pytest.raises(PassError):
        PassManager(["canonicalize", explode], instruments=[DumpIR(tmp_path)]).run(parse_with_params(TEXT))
    assert (tmp_path / "002-explode.failed.mir").exists()


def test_custom_gelu_pass_after_canonicalize_shows_in_dumped_files(tmp_path: Path) -> None:
    pipeline = insert_after(default_pipeline(), "canonicalize", approximate_gelu)
    PassManager(pipeline, instruments=[DumpIR(tmp_path)]).run(parse_with_params(TEXT))
    canon = (tmp_path / "001-canonicalize.mir").read_text()
    custom = (tmp_path / "002-approximate-gelu.mir").read_text()
    assert 'approximate="none"' in canon
    assert 'approximate="tanh"' not in canon
    assert 'approximate="tanh"' in custom and 'approximate="none"' not in custom
    assert "linear" in custom  # canonicalize ran first
    assert (tmp_path / "005-dead-code-elimination.mir").exists()


def test_custom_gelu_pass_ir_numerics_and_unchanged() -> None:
    check_rewrite(approximate_gelu, TEXT, TEXT.replace("gelu(%1)", 'gelu(%1) {approximate="tanh"}'))
    # the tanh approximation differs from erf gelu by < 1e-3 (that is the point of the user's pass)
    check_numerics(approximate_gelu, TEXT, rtol=0, atol=1e-3)
    check_unchanged(approximate_gelu, TEXT.replace("gelu(%1)", 'gelu(%1) {approximate="tanh"}'))


def test_print_after_change_and_all() -> None:
    out_all: list[str] = []
    out_change: list[str] = []
    PassManager(["constant-fold", "dead-code-elimination"],
                instruments=[PrintAfterAll(out_all.append), PrintAfterChange(out_change.append)]
                ).run(parse_with_params(TEXT))
    assert len(out_all) == 2 and "IR after constant-fold (unchanged)" in out_all[0]
    assert len(out_change) == 1 and "IR after dead-code-elimination" in out_change[0]
    assert "exp" not in out_change[0] and "graph @f" in out_change[0]


def test_timing_accumulates_over_runs() -> None:
    timing = Timing()
    pm = PassManager(["canonicalize", "dead-code-elimination"], instruments=[timing])
    pm.run(parse_with_params(TEXT))
    pm.run(parse_with_params(TEXT))
    assert timing.calls == {"canonicalize": 2, "dead-code-elimination": 2}
    assert timing.total() > 0 and "canonicalize" in timing.report()
