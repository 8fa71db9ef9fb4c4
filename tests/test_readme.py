"""The README's usage example runs as written (it is the first thing a user copies)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_usage_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)             # it writes ir_dump/ into the current folder
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert (tmp_path / "ir_dump" / "000-input.mir").exists()


def test_membound_explain_stays_the_function_after_its_module_is_imported():
    import membound
    import membound.explainer  # noqa: F401

    assert callable(membound.explain) and membound.explain.__name__ == "explain"
