"""Pass tests as ``.mir`` check files (tests/passes/mir/*.mir), run through ``membound opt``.

Each file says how ``membound opt`` runs (``// RUN: -p canonicalize --hardware none``) and holds cases
separated by ``// -----``: an input graph and the ``// CHECK`` lines its output must match (see
``filecheck.py``). Every case is also run in-process on random parameters and inputs, and the
reference backend must give the same outputs before and after the passes (unless it says
``// NUMERICS: off``, e.g. when the pass changes the graph's inputs).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch
from filecheck import Check, CheckError, check_output, mir_input, run_args, split_cases
from pass_testing import parse_with_params, random_tensor

from membound.backends.reference import run_graph
from membound.cli import build_parser, main
from membound.cost import Hardware, RooflineCost
from membound.ir import parse, print_graph, structurally_equal, sym
from membound.passes import DumpIR, PassContext, PassManager

MIR = Path(__file__).parent / "mir"
FILES = sorted(MIR.glob("*.mir"))
# the dims the numeric check binds: odd sizes, then the size-1 case
SIZES = ({"B": 3, "S": 5, "T": 7}, {"B": 1, "S": 1, "T": 1})
# (rtol, atol) per output dtype; exact dtypes (ints, bools) compare exactly, others at 1e-5
H100 = Hardware.named("h100-sxm")
TOLERANCE = {torch.float16: (1e-2, 2e-3), torch.bfloat16: (2e-2, 2e-2), torch.float32: (1e-5, 1e-5)}


def _cases() -> list[tuple[Path, int]]:
    return [(f, i) for f in FILES for i in range(len(split_cases(f.read_text())))]


def _opt_args(path: Path) -> list[str]:
    return ["opt", str(path), "--split-input-file", *shlex.split(run_args(path.read_text()))]


def test_the_check_files_exist() -> None:
    names = {f.stem for f in FILES}
    assert {"canonicalize", "fuse-attention", "merge-linear", "insert-kv-cache"} <= names, names


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_check_file(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = split_cases(path.read_text())
    assert main(_opt_args(path)) == 0
    out = capsys.readouterr().out
    outputs = [o for o in out.split("// -----\n")]
    assert len(outputs) == len(cases), f"{len(cases)} cases but {len(outputs)} outputs"
    for case, output in zip(cases, outputs):
        assert case.checks, f"{path.name}:{case.first_line}: a case without CHECK lines tests nothing"
        try:
            check_output(output, case.checks)
        except CheckError as e:
            raise CheckError(f"{path.name}, case at line {case.first_line}: {e}") from None


@pytest.mark.parametrize("path,index", _cases(), ids=[f"{f.stem}-{i}" for f, i in _cases()])
def test_numerics(path: Path, index: int) -> None:
    text = path.read_text()
    case = split_cases(text)[index]
    if not case.numerics:
        pytest.skip("the case says NUMERICS: off")
    args = build_parser().parse_args(_opt_args(path))
    names = [n for n in args.passes.split(",") if n]
    cost = None if args.hardware == "none" else RooflineCost(Hardware.named(args.hardware))
    original = parse_with_params(case.text)
    g = PassManager(names, verify=True).run(original.copy(), PassContext(cost=cost))
    if print_graph(g) == print_graph(original):
        return  # an unchanged case: its CHECK lines say so
    for sizes in SIZES:
        binds = {sym(k): n for k, n in sizes.items()}
        gen = torch.Generator().manual_seed(1)
        inputs = [random_tensor(v, binds, gen) for v in original.inputs]
        before = run_graph(original.copy(), inputs)
        after = run_graph(g.copy(), inputs)
        assert len(before) == len(after)
        for a, b in zip(before, after):
            assert a.dtype == b.dtype and a.shape == b.shape
            rtol, atol = TOLERANCE.get(a.dtype, (1e-5, 1e-5))
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol)


# ---- the runner itself: checks that must fail do fail -----------------------------------------
OUT = """graph @f(%x: f32[B, 6]) {
  %0 = reshape(%x) {shape=[B, 3, 2]} : f32[B, 3, 2]
  %1 = neg(%0) : f32[B, 3, 2]
  return %1
}
"""


def _c(*lines: str) -> list[Check]:
    out = []
    for i, line in enumerate(lines):
        kind, _, pattern = line.partition(": ")
        out.append(Check(kind, pattern, i + 1))
    return out


def test_filecheck_passes_on_matching_lines() -> None:
    check_output(OUT, _c("CHECK-LABEL: graph @f", "CHECK-NEXT: [[R:%\\d+]] = reshape(%x) {shape=[B, 3, 2]}",
                         "CHECK-NOT: reshape", "CHECK: neg([[R]])", "CHECK-NEXT: return {{%[0-9]+}}"))


@pytest.mark.parametrize("checks", [
    ("CHECK: transpose",),                                  # absent
    ("CHECK: neg", "CHECK: reshape"),                       # out of order
    ("CHECK: graph", "CHECK-NEXT: neg"),                    # not on the next line
    ("CHECK: graph", "CHECK-NOT: reshape", "CHECK: neg"),   # present where it must not be
    ("CHECK: [[R:%\\d+]] = reshape", "CHECK: neg(%x)"),      # wrong operand
    ("CHECK: [[R:%\\d+]] = reshape", "CHECK: return [[R]]"),  # the capture is %0, return reads %1
    ("CHECK: neg", "CHECK-NOT: return"),                     # CHECK-NOT at the end covers the rest
], ids=["absent", "order", "next", "not", "operand", "capture", "trailing-not"])
def test_filecheck_fails_on_mismatch(checks: tuple[str, ...]) -> None:
    with pytest.raises(CheckError):
        check_output(OUT, _c(*checks))


# ---- membound opt on a dump -------------------------------------------------------------------
def test_opt_replays_a_dump(tmp_path: Path) -> None:
    """The file DumpIR wrote before a pass, run through ``membound opt -p <that pass>``, gives the file
    it wrote after it (up to the names of new values): a dump is a bug report anyone can replay."""
    graph = parse_with_params(mir_input("insert-kv-cache", 0))  # one GPT-2-like layer
    passes = ["canonicalize", "merge-linear", "insert-kv-cache", "dead-code-elimination"]
    PassManager(passes, instruments=[DumpIR(tmp_path)]).run(graph, PassContext(cost=RooflineCost(H100)))
    dumps = sorted(tmp_path.glob("*.mir"))
    assert [p.stem for p in dumps] == ["000-input"] + [f"{i:03d}-{n}" for i, n in enumerate(passes, start=1)]
    for before, after in zip(dumps, dumps[1:]):
        name = after.stem.split("-", 1)[1]
        out = tmp_path / f"replay-{name}.txt"
        assert main(["opt", str(before), "-p", name, "--hardware", "h100-sxm", "-o", str(out)]) == 0
        diff = structurally_equal(parse(out.read_text()), parse(after.read_text()), explain=True)
        assert diff == "", f"{name}: {diff}"
    assert "split(" in dumps[2].read_text() and "cache_write(" in dumps[3].read_text()


def test_opt_reads_stdin_and_names_an_unknown_pass(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import io

    text = "graph @f(%x: f32[B, 4]) {\n  %0 = neg(%x) : f32[B, 4]\n  %1 = neg(%0) : f32[B, 4]\n  return %1\n}\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["opt", "-", "-p", "canonicalize", "--hardware", "none"]) == 0
    assert capsys.readouterr().out.count("neg(") in (0, 2)  # printed; whatever canonicalize does with neg(neg)
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["opt", "-", "-p", "canonicalise", "--hardware", "none"]) == 2
    assert "membound opt: no pass named 'canonicalise'" in capsys.readouterr().err


def test_opt_without_a_graph_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.mir"
    empty.write_text("// only a comment\n")
    assert main(["opt", str(empty), "-p", "canonicalize", "--hardware", "none"]) == 1
    assert "no 'graph @name" in capsys.readouterr().err
