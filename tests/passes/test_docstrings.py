"""Every pass's docstring example is true: its `// before` graph becomes its `// after` graph."""

from __future__ import annotations

import re

import pytest
from pass_testing import check_numerics, check_rewrite

from membound.passes import get_pass, pass_name


def example(p: object) -> tuple[str, str]:
    doc = __import__(p.__module__, fromlist=["_"]).__doc__ or ""  # the pass's module docstring
    block = re.search(r"```\n(.*?)```", doc, re.S)
    assert block is not None, f"{pass_name(p)}: the module docstring has no ``` before/after example"
    before, after = re.split(r"^// after.*$", block.group(1), flags=re.M)
    return before, after


# passes whose module docstring holds a complete `// before` / `// after` pair of graphs
DOCUMENTED = ["canonicalize", "constant-fold", "common-subexpression-elimination", "dead-code-elimination",
              "fuse-moe", "fuse-linear-residual", "fuse-norm-linear", "fuse-attention-block", "fuse-mlp-block"]


@pytest.mark.parametrize("p", [get_pass(n) for n in DOCUMENTED], ids=pass_name)
def test_docstring_example_holds(p: object) -> None:
    before, after = example(p)
    check_rewrite(p, before, after)
    check_numerics(p, before)
