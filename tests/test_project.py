"""Project plumbing: CI runs exactly the test command the README tells a newcomer to run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_code_blocks() -> list[str]:
    """The bodies of the README's fenced code blocks, in order, without trailing newlines."""
    text = (ROOT / "README.md").read_text()
    return [body.strip("\n") for body in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)]


def test_readme_opens_with_install_and_test_commands() -> None:
    blocks = readme_code_blocks()
    assert len(blocks) >= 2, "README.md needs the set-up command and the test command as its first code blocks"
    assert blocks[0].startswith("pip install -e ."), blocks[0]
    assert "pytest" in blocks[1], blocks[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = readme_code_blocks()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines, f".ci/run does not run the README's test command {test_command!r}"


def test_ci_script_is_strict_bash() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert script.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in script
    assert (ROOT / ".ci" / "run").stat().st_mode & 0o111, ".ci/run must be executable"
