"""A small check-lines runner for ``.mir`` pass tests (a subset of LLVM's FileCheck).

A ``.mir`` test file holds one or more cases separated by ``// -----`` lines. The file's first
``// RUN:`` line gives the arguments of ``membound opt`` (``-p canonicalize --hardware none``); the
runner adds the file and ``--split-input-file``. Each case is an input graph followed by check lines
matched against that case's output:

    // CHECK: text        the next line at or after the current one that contains text
    // CHECK-LABEL: text  the same (by convention on the ``graph @name`` line)
    // CHECK-NEXT: text   the line right after the previous match contains text
    // CHECK-NOT: text    no line between the previous match and the next one contains text
    // NUMERICS: off      skip the reference-backend comparison of input and output for this case

In ``text``, ``{{regex}}`` matches a regular expression, ``[[NAME:regex]]`` captures what it matched
and a later ``[[NAME]]`` must match the same text. Runs of spaces compare as one space.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SPLIT = re.compile(r"^// -----.*$", re.M)
DIRECTIVE = re.compile(r"^\s*//\s*(CHECK(?:-NEXT|-NOT|-LABEL)?|NUMERICS):\s?(.*)$")
RUN = re.compile(r"^\s*//\s*RUN:\s*(.*)$", re.M)


@dataclass
class Check:
    kind: str  # CHECK, CHECK-NEXT, CHECK-NOT, CHECK-LABEL
    pattern: str
    line: int  # 1-based line in the case, for messages


@dataclass
class Case:
    text: str  # the case's input (checks are comments: the parser skips them)
    checks: list[Check] = field(default_factory=list)
    numerics: bool = True
    first_line: int = 1  # line of the case in its file

    @property
    def has_graph(self) -> bool:
        return re.search(r"^\s*graph\b", self.text, re.M) is not None


def run_args(text: str) -> str:
    """The arguments of the file's ``// RUN:`` line."""
    m = RUN.search(text)
    if m is None:
        raise ValueError("a .mir test needs a '// RUN: -p pass,pass ...' line")
    return m.group(1).strip()


def split_cases(text: str) -> list[Case]:
    """The cases of a file (chunks without a graph, such as a header, are dropped)."""
    cases = []
    offset = 1
    for chunk in SPLIT.split(text):
        case = Case(chunk, first_line=offset)
        for i, line in enumerate(chunk.splitlines(), start=1):
            m = DIRECTIVE.match(line)
            if m is None:
                continue
            if m.group(1) == "NUMERICS":
                case.numerics = m.group(2).strip().lower() != "off"
            else:
                case.checks.append(Check(m.group(1), m.group(2).rstrip(), i))
        if case.has_graph:
            cases.append(case)
        offset += chunk.count("\n") + 1
    return cases


def _normalize(line: str) -> str:
    return re.sub(r"\s+", " ", line.strip())


def _compile(pattern: str, variables: dict[str, str]) -> tuple[re.Pattern[str], list[str]]:
    """A regex for ``pattern`` and the names of the variables it defines (in group order)."""
    pattern = _normalize(pattern)
    out, names, pos = [], [], 0
    token = re.compile(r"\{\{(.+?)\}\}|\[\[(\w+):(.+?)\]\]|\[\[(\w+)\]\]")
    for m in token.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        if m.group(1) is not None:
            out.append(f"(?:{m.group(1)})")
        elif m.group(2) is not None:
            names.append(m.group(2))
            out.append(f"({m.group(3)})")
        else:
            name = m.group(4)
            if name not in variables:
                raise CheckError(f"[[{name}]] is used before a [[{name}:...]] defines it")
            out.append(re.escape(variables[name]))
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out)), names


class CheckError(AssertionError):
    pass


def check_output(output: str, checks: list[Check]) -> None:
    """Match ``checks`` against ``output`` in order; raise :class:`CheckError` saying which failed."""
    lines = [_normalize(x) for x in output.splitlines()]
    variables: dict[str, str] = {}
    pos = 0  # index of the first line a CHECK may match
    last: int = -1  # index of the previous match
    pending_not: list[Check] = []

    def search(c: Check, start: int, stop: int) -> tuple[int, re.Match[str]] | None:
        rx, _ = _compile(c.pattern, variables)
        for i in range(start, stop):
            m = rx.search(lines[i])
            if m is not None:
                return i, m
        return None

    def bind(c: Check, m: re.Match[str]) -> None:
        _, names = _compile(c.pattern, variables)
        for k, name in enumerate(names, start=1):
            variables[name] = m.group(k)

    def flush_not(stop: int) -> None:
        for c in pending_not:
            hit = search(c, last + 1, stop)
            if hit is not None:
                raise CheckError(f"line {c.line}: CHECK-NOT: {c.pattern!r} matched output line {hit[0] + 1}: "
                                 f"{lines[hit[0]]!r}\n--- output:\n{output}")
        pending_not.clear()

    for c in checks:
        if c.kind == "CHECK-NOT":
            pending_not.append(c)
            continue
        if c.kind == "CHECK-NEXT":
            if last < 0 or last + 1 >= len(lines):
                raise CheckError(f"line {c.line}: CHECK-NEXT: {c.pattern!r} has no line after the previous match"
                                 f"\n--- output:\n{output}")
            hit = search(c, last + 1, last + 2)
            if hit is None:
                raise CheckError(f"line {c.line}: CHECK-NEXT: {c.pattern!r} does not match the next line "
                                 f"{lines[last + 1]!r}\n--- output:\n{output}")
        else:
            hit = search(c, pos, len(lines))
            if hit is None:
                raise CheckError(f"line {c.line}: {c.kind}: {c.pattern!r} not found after output line {pos}"
                                 f"\n--- output:\n{output}")
        flush_not(hit[0])
        bind(c, hit[1])
        last = hit[0]
        pos = last + 1
    flush_not(len(lines))


def mir_input(stem: str, index: int) -> str:
    """The input graph of case ``index`` of ``tests/passes/mir/<stem>.mir`` (for Python tests of it)."""
    from pathlib import Path

    path = Path(__file__).parent / "mir" / f"{stem}.mir"
    return split_cases(path.read_text())[index].text
