"""The pass manager: runs a pipeline (a plain list of passes), verifies after each one, records what changed.

A pass is a function ``(graph, ctx) -> changed`` registered under a kebab-case name, or an instance of a
class with options that has a ``name`` attribute and ``__call__(graph, ctx) -> bool``; its options are
a small dataclass (``passes.options``: ``ConstantFold(max_elements=16)``, ``constant-fold{max-elements=16}``):

    @register_pass("dead-code-elimination")
    def dead_code_elimination(graph: Graph, ctx: PassContext) -> bool:
        '''Removes nodes whose results are unused. ...'''

    PassManager(["canonicalize", my_pass], instruments=[DumpIR("ir/")]).run(graph)

Passes mutate the graph in place. After every pass the manager runs the verifier (on by default;
``MEMBOUND_VERIFY=0`` or ``verify=False`` turns it off) and, when a pass raises or leaves a broken
graph, raises :class:`PassError` naming the pass and every pass that ran before it. Instruments
(printing, dumping, timing: ``instruments.py``) observe the run without being passes themselves.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar, Union

from membound.ir import Graph, VerificationError, print_graph, verify

if TYPE_CHECKING:
    from membound.cost import CostModel
    from membound.passes.instruments import Instrument

PassFn = Callable[[Graph, "PassContext"], bool]
# a pipeline entry: a registered name or a pass (a function or a callable instance with ``name``)
PassLike = Union[str, PassFn]
P = TypeVar("P")


@dataclass
class PassContext:
    """What a pass may consult besides the graph.

    ``cost``: the cost model (``ctx.cost.estimate(...)``); None: passes use their rule without one.
    ``decode_dims``: the dims at which the decode-regime rewrites (merge-linear, fuse-gated-linear)
    compare costs, e.g. ``{"B": 8}``; symbols not given are 1 (one token per row).
    ``log``: human-readable notes, e.g. why a rewrite did not fire; use :meth:`note`.
    ``dump_dir``: where to dump IR after each pass (the manager adds ``DumpIR(dump_dir)``).
    """

    cost: Optional["CostModel"] = None
    decode_dims: Optional[dict[str, int]] = None
    log: list[str] = field(default_factory=list)
    dump_dir: Optional[Union[str, Path]] = None
    current_pass: Optional[str] = None  # set by the manager while a pass runs

    def note(self, message: str) -> None:
        """Append ``"<pass>: <message>"`` to the log (once: repeated notes are dropped)."""
        line = f"{self.current_pass or '<no pass>'}: {message}"
        if line not in self.log:
            self.log.append(line)


class PassError(RuntimeError):
    """A pass raised or left an invalid graph. ``__cause__`` holds the original error."""

    def __init__(self, pass_name: str, ran_before: Sequence[str], message: str) -> None:
        self.pass_name = pass_name
        self.ran_before = list(ran_before)
        before = ", ".join(self.ran_before) if self.ran_before else "none"
        super().__init__(f"pass {pass_name!r} failed: {message}\n  passes that ran before it: {before}\n"
                         f"  to see the IR after each pass, set MEMBOUND_DUMP_IR=<dir>")


# ---------------------------------------------------------------------------------------------
# the registry: kebab-case name -> pass function, or pass class (instantiated with default options)
# ---------------------------------------------------------------------------------------------
_REGISTRY: dict[str, Any] = {}


def register_pass(name: str) -> Callable[[P], P]:
    """Register a pass function or a pass class under a kebab-case ``name`` (its docstring documents it)."""
    if not name or name != name.lower() or " " in name or "_" in name:
        raise ValueError(f"pass name {name!r} must be kebab-case, e.g. 'dead-code-elimination'")

    def decorate(obj: P) -> P:
        if name in _REGISTRY:
            raise ValueError(f"a pass named {name!r} is already registered ({_REGISTRY[name]!r})")
        if not callable(obj):
            raise TypeError(f"register_pass({name!r}) needs a function or a class, got {obj!r}")
        obj.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = obj
        return obj

    return decorate


def get_pass(name: str, **options: Any) -> PassFn:
    """The registered pass called ``name``; a pass class is instantiated with ``options``, which it checks
    against its typed options (``passes.options``: an unknown option or a wrong type names the pass)."""
    try:
        obj = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no pass named {name!r}; registered passes: {sorted(_REGISTRY)}") from None
    if isinstance(obj, type):
        return obj(**options)
    if options:
        raise TypeError(f"pass {name!r} is a function and takes no options (got {sorted(options)})")
    return obj


def registered_passes() -> dict[str, Any]:
    return dict(_REGISTRY)


def resolve(entry: PassLike) -> PassFn:
    """A pipeline entry as a callable pass (names are looked up in the registry)."""
    if isinstance(entry, str):
        return get_pass(entry)
    if isinstance(entry, type):
        raise TypeError(f"pipeline entry {entry.__name__} is a pass class; put an instance in the pipeline: "
                        f"{entry.__name__}()")
    if not callable(entry):
        raise TypeError(f"pipeline entry {entry!r} is neither a pass name nor a callable pass")
    return entry


def pass_name(entry: PassLike) -> str:
    """The kebab-case name of a pipeline entry (``name`` attribute, else the function name)."""
    if isinstance(entry, str):
        return entry
    name = getattr(entry, "name", None)
    if isinstance(name, str):
        return name
    fn_name = getattr(entry, "__name__", None) or type(entry).__name__
    return fn_name.strip("_").replace("_", "-")


# ---------------------------------------------------------------------------------------------
# the manager
# ---------------------------------------------------------------------------------------------
@dataclass
class PassRecord:
    """What one pass did in one run (for "what each pass changed" tables)."""

    name: str
    changed: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        what = "changed" if self.changed else "-"
        return (f"{self.name:<36} {what:<8} {self.nodes_before:>5} -> {self.nodes_after:<5} nodes "
                f"{self.seconds * 1e3:8.2f} ms")


def _signature(graph: Graph) -> list[Any]:
    """The graph's outputs as a pass must keep them: one type per output (None: not a value)."""
    return [getattr(v, "type", None) for v in graph.outputs]


def _env_verify() -> bool:
    return os.environ.get("MEMBOUND_VERIFY", "1").strip().lower() not in ("0", "false", "no", "off")


class PassManager:
    """Runs ``pipeline`` in order on a graph (in place), verifying after every pass.

    ``verify=None`` reads ``MEMBOUND_VERIFY`` (default on). With verification on, a pass that returns
    False but edits the graph is also reported, since instruments and fixpoint loops trust that flag.
    """

    def __init__(self, pipeline: Sequence[PassLike], instruments: Sequence["Instrument"] = (),
                 verify: Optional[bool] = None) -> None:
        self.entries = list(pipeline)
        self.passes = [resolve(p) for p in self.entries]
        self.names = [pass_name(p) for p in self.passes]
        self.instruments = list(instruments)
        self.verify = verify
        self.records: list[PassRecord] = []

    def _instruments_for(self, ctx: PassContext) -> list["Instrument"]:
        from membound.passes.instruments import DumpIR

        out = list(self.instruments)
        if not any(isinstance(i, DumpIR) for i in out):
            target = ctx.dump_dir or os.environ.get("MEMBOUND_DUMP_IR")
            if target:
                out.append(DumpIR(target))
        return out

    def run(self, graph: Graph, ctx: Optional[PassContext] = None) -> Graph:
        """Run every pass on ``graph`` (mutated in place) and return it. Raises :class:`PassError`."""
        ctx = ctx if ctx is not None else PassContext()
        check = _env_verify() if self.verify is None else self.verify
        instruments = self._instruments_for(ctx)
        self.records = []
        if check:
            try:
                verify(graph)
            except VerificationError as e:
                raise PassError("<input>", [], f"the input graph is invalid before any pass ran: {e}") from e
        for inst in instruments:
            inst.enter_pipeline(graph, ctx, self.names)
        for index, (name, p) in enumerate(zip(self.names, self.passes), start=1):
            self._run_one(graph, ctx, name, p, index, check, instruments)
        for inst in instruments:
            inst.exit_pipeline(graph, ctx)
        return graph

    def _run_one(self, graph: Graph, ctx: PassContext, name: str, p: PassFn, index: int, check: bool,
                 instruments: list["Instrument"]) -> None:
        ran_before = self.names[:index - 1]
        for inst in instruments:
            inst.run_before_pass(graph, ctx, name, index)
        before_text = print_graph(graph) if check else None
        signature = _signature(graph)
        nodes_before, log_before = len(graph.nodes), len(ctx.log)
        ctx.current_pass = name
        start = time.perf_counter()
        try:
            changed = p(graph, ctx)
            seconds = time.perf_counter() - start
            if not isinstance(changed, bool):
                raise TypeError(f"a pass must return True/False (changed), got {changed!r}")
            if check:
                verify(graph)
                if not changed and print_graph(graph) != before_text:
                    raise RuntimeError("the pass returned False (unchanged) but modified the graph")
            after = _signature(graph)
            if not getattr(p, "changes_signature", False) and not (
                    len(after) == len(signature) and all(a is not None and b is not None and a.equivalent(b)
                                                     for a, b in zip(after, signature))):
                raise RuntimeError(f"the pass changed the graph's outputs from {len(signature)} "
                                   f"({', '.join(map(str, signature))}) to {len(after)} "
                                   f"({', '.join(map(str, after))}); a pass keeps every output (set "
                                   f"changes_signature = True on a pass meant to change them)")
        except Exception as e:
            for inst in instruments:
                inst.on_failure(graph, ctx, name, index, e)
            what = "left an invalid graph" if isinstance(e, VerificationError) else f"raised {type(e).__name__}"
            raise PassError(name, ran_before, f"{what}: {e}") from e
        finally:
            ctx.current_pass = None
        self.records.append(PassRecord(name, changed, seconds, nodes_before, len(graph.nodes),
                                       ctx.log[log_before:]))
        for inst in instruments:
            inst.run_after_pass(graph, ctx, name, index, changed, seconds)

    def summary(self) -> str:
        """One line per pass of the last run: changed or not, node counts, time."""
        return "\n".join(str(r) for r in self.records)
