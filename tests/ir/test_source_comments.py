"""Each captured IR node names its source (module path, file:line) as a comment in dumps and explain rows;
dumps with those comments parse back, print unchanged, and replay through ``membound opt``."""

from pathlib import Path

import pytest
import torch
from torch import nn

import membound
from membound.cli import main
from membound.cost.hardware import Hardware
from membound.ir import parse, print_graph
from membound.ir.analysis import structurally_equal
from membound.ir.printer import source_comment
from membound.passes.pattern import Builder

HERE = Path(__file__).name


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(12, 20)
        self.down = nn.Linear(20, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.up(x))  # the relu line
        return self.down(h) + x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) * 2.0


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, membound.CompiledModel]:
    folder = tmp_path_factory.mktemp("dump")
    torch.manual_seed(0)
    compiled = membound.compile(Net(), example_inputs=(torch.randn(3, 5, 12),), backend="reference",
                                dump_ir=folder)
    return folder, compiled


def test_dump_lines_name_module_and_file_line(dumped: tuple[Path, membound.CompiledModel]) -> None:
    folder, _ = dumped
    text = (folder / "000-input.mir").read_text()
    relu = next(line for line in text.splitlines() if "= relu(" in line)
    assert f"// block (Block), {HERE}:" in relu and "torch.relu(self.up(x))" in relu
    linear = next(line for line in text.splitlines() if "= linear(" in line)
    assert "block.up (Linear)" in linear or "block (Block)" in linear


def test_dump_with_comments_parses_back_and_prints_unchanged(dumped: tuple[Path, membound.CompiledModel]) -> None:
    folder, compiled = dumped
    for path in sorted(folder.glob("*.mir")):
        text = path.read_text()
        g = parse(text)
        assert print_graph(g, sources=True) == text, path.name
    g = parse((folder / "000-input.mir").read_text())
    assert structurally_equal(g, compiled.input_ir)
    assert print_graph(g, sources=False).count("//") == 0


def test_membound_opt_replays_a_commented_dump(dumped: tuple[Path, membound.CompiledModel], tmp_path: Path) -> None:
    folder, _ = dumped
    out = tmp_path / "out.mir"
    assert main(["opt", str(folder / "000-input.mir"), "-p", "canonicalize,dead-code-elimination",
                 "-o", str(out)]) == 0
    text = out.read_text()
    assert f"{HERE}:" in text                      # the comments survive the replay
    assert print_graph(parse(text), sources=True) == text


def test_parser_keeps_a_trailing_comment_of_a_multi_result_node() -> None:
    text = ("graph @g(%x: f32[4, 6]) {\n"
            "  %a, %b = split(%x) {dim=1, sizes=[2, 4]} : f32[4, 2], f32[4, 4]  // m (M), f.py:3: a, b = x.split(...)\n"
            "  // a comment line of its own\n"
            "  %c = relu(%b) : f32[4, 4]\n"
            "  return %a, %c\n"
            "}\n")
    g = parse(text)
    split, relu = g.nodes
    assert split.meta["loc"] == "m (M), f.py:3: a, b = x.split(...)" and "loc" not in relu.meta
    assert source_comment(split) == split.meta["loc"]


def test_rewritten_nodes_inherit_the_replaced_nodes_source() -> None:
    g = parse("graph @g(%x: f32[4]) {\n  %y = relu(%x) : f32[4]  // act (ReLU), m.py:9: y = act(x)\n"
              "  return %y\n}\n")
    relu = g.nodes[0]
    new = Builder(g, relu).call("exp", g.inputs[0])   # a pattern rewrite's replacement
    assert new.producer.meta["loc"] == "act (ReLU), m.py:9: y = act(x)"
    other = g.create_node("neg", [g.inputs[0]])       # a pass's own node, then put in place of relu
    g.insert_before(relu, other)
    g.replace_all_uses(relu.result, other.result)
    assert other.meta["loc"] == relu.meta["loc"]


def test_explain_rows_show_the_source(dumped: tuple[Path, membound.CompiledModel]) -> None:
    _, compiled = dumped
    report = membound.explain(compiled, hardware=Hardware.named("h100-sxm"), seq_len=8)
    rows = report.tables[("before", "prefill")]
    assert any(r.op == "relu" and f"block (Block), {HERE}:" in r.source for r in rows)
    assert all(":" not in r.source.split(f"{HERE}:")[-1] for r in rows if HERE in r.source)  # no code in rows
    text = str(report)
    assert "source" in text.splitlines()[1] and f"{HERE}:" in text
