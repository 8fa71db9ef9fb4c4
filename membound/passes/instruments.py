"""Instruments observe a pipeline run without being passes: printing, dumping IR files, timing.

    PassManager(pipeline, instruments=[PrintAfterChange(), DumpIR("ir/"), Timing()]).run(graph)

``DumpIR(dir)`` writes ``000-input.mir``, ``001-canonicalize.mir``, ... : the graph after each pass,
numbered by position in the pipeline, in the text form that ``membound.ir.parse`` reads back.
``MEMBOUND_DUMP_IR=dir`` (or ``PassContext(dump_dir=dir)``) makes the manager add it automatically.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

from membound.ir import Graph, print_graph

if TYPE_CHECKING:
    from membound.passes.manager import PassContext


class Instrument:
    """Hooks called by :class:`PassManager`; every hook does nothing by default."""

    def enter_pipeline(self, graph: Graph, ctx: "PassContext", pass_names: Sequence[str]) -> None:
        pass

    def run_before_pass(self, graph: Graph, ctx: "PassContext", name: str, index: int) -> None:
        pass

    def run_after_pass(self, graph: Graph, ctx: "PassContext", name: str, index: int, changed: bool,
                       seconds: float) -> None:
        pass

    def on_failure(self, graph: Graph, ctx: "PassContext", name: str, index: int, error: BaseException) -> None:
        pass

    def exit_pipeline(self, graph: Graph, ctx: "PassContext") -> None:
        pass


def _stdout(text: str) -> None:
    sys.stdout.write(text)


class PrintAfterAll(Instrument):
    """Print the graph after every pass (to stdout, or to ``write``)."""

    def __init__(self, write: Callable[[str], object] = _stdout) -> None:
        self.write = write

    def run_after_pass(self, graph: Graph, ctx: "PassContext", name: str, index: int, changed: bool,
                       seconds: float) -> None:
        flag = "" if changed else " (unchanged)"
        self.write(f"// ----- IR after {name}{flag} -----\n{print_graph(graph, sources=True)}")


class PrintAfterChange(PrintAfterAll):
    """Print the graph after each pass that changed it."""

    def run_after_pass(self, graph: Graph, ctx: "PassContext", name: str, index: int, changed: bool,
                       seconds: float) -> None:
        if changed:
            super().run_after_pass(graph, ctx, name, index, changed, seconds)


_DUMP_FILE = re.compile(r"^\d{3}-.*\.mir$")


class DumpIR(Instrument):
    """Write the graph before the pipeline and after each pass into ``dir`` as numbered ``.mir`` files.

    Stale numbered files from an earlier run into the same directory are removed first, so the
    directory always shows one run. A failing pass leaves ``NNN-<pass>.failed.mir`` when the
    broken graph can still be printed.
    """

    def __init__(self, dir: Union[str, Path]) -> None:
        self.dir = Path(dir)
        self.files: list[Path] = []

    def _write(self, stem: str, graph: Graph) -> None:
        path = self.dir / f"{stem}.mir"
        path.write_text(print_graph(graph, sources=True))
        self.files.append(path)

    def enter_pipeline(self, graph: Graph, ctx: "PassContext", pass_names: Sequence[str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.iterdir():
            if _DUMP_FILE.match(old.name):
                old.unlink()
        self.files = []
        self._write("000-input", graph)

    def run_after_pass(self, graph: Graph, ctx: "PassContext", name: str, index: int, changed: bool,
                       seconds: float) -> None:
        self._write(f"{index:03d}-{name}", graph)

    def on_failure(self, graph: Graph, ctx: "PassContext", name: str, index: int, error: BaseException) -> None:
        try:
            self._write(f"{index:03d}-{name}.failed", graph)
        except Exception:  # the graph may be too broken to print; the PassError still says what failed
            pass


class Timing(Instrument):
    """Accumulate seconds per pass name over every run it observes; ``report()`` formats them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def run_after_pass(self, graph: Graph, ctx: "PassContext", name: str, index: int, changed: bool,
                       seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def total(self) -> float:
        return sum(self.seconds.values())

    def report(self, top: Optional[int] = None) -> str:
        rows = sorted(self.seconds.items(), key=lambda kv: -kv[1])[:top]
        total = self.total() or 1.0
        lines = [f"{'pass':<36} {'calls':>5} {'ms':>9} {'share':>6}"]
        for name, s in rows:
            lines.append(f"{name:<36} {self.calls[name]:>5} {s * 1e3:9.2f} {100 * s / total:5.1f}%")
        return "\n".join(lines)
