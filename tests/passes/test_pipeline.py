"""Pipelines are plain lists: default_pipeline, insert_before/after, without, names and passes mixed."""

from __future__ import annotations

import pytest
from pass_testing import parse_with_params

from membound.ir import Graph
from membound.passes import (
    PassContext,
    PassManager,
    default_pipeline,
    get_pass,
    insert_after,
    insert_before,
    pass_name,
    without,
)

DEFAULT = ["canonicalize", "constant-fold", "common-subexpression-elimination", "dead-code-elimination",
           "fuse-attention", "fuse-moe", "merge-linear", "fuse-gated-linear", "fuse-linear-glu", "canonicalize",
           "dead-code-elimination"]


def mark(graph: Graph, ctx: PassContext) -> bool:
    ctx.note("ran")
    return False


def test_default_pipeline_is_a_fresh_list_of_passes() -> None:
    a = default_pipeline()
    assert [pass_name(p) for p in a] == DEFAULT
    a.append(mark)
    assert len(default_pipeline()) == len(DEFAULT)  # no global state was edited


def test_insert_before_and_after() -> None:
    base = default_pipeline()
    before = insert_before(base, "constant-fold", mark)
    after = insert_after(base, "constant-fold", "dead-code-elimination")
    assert [pass_name(p) for p in before] == ["canonicalize", "mark", *DEFAULT[1:]]
    assert [pass_name(p) for p in after] == DEFAULT[:2] + ["dead-code-elimination"] + DEFAULT[2:]
    assert [pass_name(p) for p in base] == DEFAULT  # the input list is not modified
    assert [pass_name(p) for p in insert_after(base, "dead-code-elimination", mark)][4] == "mark"  # after the first
    assert [pass_name(p) for p in without(base, "constant-fold")] == [n for n in DEFAULT if n != "constant-fold"]
    with pytest.raises(KeyError, match="no pass named 'fuse-everything' in the pipeline"):
        insert_before(base, "fuse-everything", mark)


def test_names_and_passes_mix_in_one_pipeline() -> None:
    ctx = PassContext()
    pipeline = ["canonicalize", mark, get_pass("constant-fold", max_elements=8)] + default_pipeline()[2:]
    PassManager(pipeline).run(parse_with_params("""graph @f(%x: f32[B, 4]) {
      %0 = exp(%x) : f32[B, 4]
      return %0
    }"""), ctx)
    assert "mark: ran" in ctx.log
