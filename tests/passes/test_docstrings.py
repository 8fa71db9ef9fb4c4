"""Every pass's docstring example is true: its `// before` graph becomes its `// after` graph."""

from __future__ import annotations

import re

import pytest
from pass_testing import check_numerics, check_rewrite

from membound.passes import default_pipeline, pass_name


def example(p: object) -> tuple[str, str]:
    doc = __import__(p.__module__, fromlist=["_"]).__doc__ or ""  # the pass's module docstring
    block = re.search(r"```\n(.*?)```", doc, re.S)
    assert block is not None, f"{pass_name(p)}: the module docstring has no ``` before/after example"
    before, after = re.split(r"^// after.*$", block.group(1), flags=re.M)
    return before, after


@pytest.mark.parametrize("p", default_pipeline(), ids=pass_name)
def test_docstring_example_holds(p: object) -> None:
    before, after = example(p)
    check_rewrite(p, before, after)
    check_numerics(p, before)
