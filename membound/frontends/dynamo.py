"""The Dynamo frontend: a ``torch.compile`` backend hands us a torch-level FX graph; we lower it to ATen
by exporting the GraphModule itself, then translate it with the same table as ``capture_export``.

The backend *registration* (which must return a callable) lives in the API layer; it calls
:func:`capture_dynamo` and runs the capture's graph:

    def backend(gm, example_inputs):
        cap = capture_dynamo(gm, example_inputs)

        def call(*args):
            xs = cap.flatten_inputs(args)
            return cap.unflatten_outputs(run(cap.graph, xs), xs)  # (xs: the sizes a subgraph may return)
        return call

Dynamo's graph inputs are more than activations. Each placeholder is classified from its
``grapharg`` (Dynamo's record of where the value came from):

* parameters and buffers (Dynamo lifts them: ``L['self']._modules['lm_head']._parameters['weight']``)
  become IR params named by their FQN (``lm_head.weight``), by reference;
* Python floats Dynamo passes as 0-d tensors (``variance_epsilon``) become ``constant`` nodes, and a
  call with a different value does not match;
* SymInt inputs (``s0`` = ``input_ids.size(1)``) are recomputed from the tensor they measure, so the
  exported graph ties them to that tensor's dim instead of inventing an unrelated symbol;
* the tensors of a Hugging Face cache object (``past_key_values``) and tensors marked with
  ``torch._dynamo.mark_static_address`` (HF's StaticCache) persist across calls and are written in
  place: they become params (state once written), and ``graph.meta["call_state"]`` maps their
  placeholder positions to IR names so the caller binds each call's own tensors;
* everything else is a graph input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional, Sequence

import sympy
import torch
import torch.fx

from membound.frontends.capture import Capture, ConstLeaf, InLeaf, ParamLeaf, SymLeaf, TensorLeaf, flatten_call
from membound.frontends.errors import CaptureError
from membound.frontends.export import build_capture_functional, export_leaves
from membound.frontends.translate import AsInput, AsParam, Role


@dataclass(frozen=True)
class _Size:
    """A SymInt placeholder recomputed as ``fn(sizes of tensor leaves)``."""

    fn: Callable[..., Any]
    sizes: tuple[tuple[int, int], ...]  # (tensor leaf index, dim) per argument of fn


class _DynamoCall(torch.nn.Module):
    """Calls the Dynamo graph from its tensor placeholders only, recomputing SymInt placeholders."""

    def __init__(self, gm: torch.fx.GraphModule, plan: Sequence[Any]) -> None:
        super().__init__()
        self.gm = gm
        object.__setattr__(self, "_plan", list(plan))

    def forward(self, *leaves: torch.Tensor) -> Any:
        full = []
        for step in self._plan:
            if isinstance(step, _Size):
                full.append(step.fn(*[leaves[i].size(d) for i, d in step.sizes]))
            else:
                full.append(leaves[step])
        with torch.fx.traceback.preserve_node_meta():  # keep the model's module paths and source lines
            return torch.fx.Interpreter(self.gm).run(*full)


def capture_dynamo(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], dynamic: bool = True,
                   fallback: Optional[str] = None) -> Capture:
    """Capture a Dynamo FX graph (what a ``torch.compile`` backend receives) as membound IR.

    The Capture's call structure is the flat argument list Dynamo calls the compiled function with;
    ``flatten_inputs(args)`` picks the activations, parameters are read from ``graph.tensors``.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise CaptureError(f"the Dynamo graph has {len(placeholders)} inputs but {len(example_inputs)} example "
                           "inputs were given")
    dims = _tensor_dims(placeholders)
    leaves: list[torch.Tensor] = []
    roles: list[Role] = []
    plan: list[Any] = []
    in_leaves: list[InLeaf] = []
    tensor_positions = [pos for pos, ex in enumerate(example_inputs) if isinstance(ex, torch.Tensor)]
    leaf_of = {pos: i for i, pos in enumerate(tensor_positions)}  # placeholder position -> tensor leaf index
    n_inputs = 0
    call_state: dict[int, str] = {}  # placeholder position -> IR name of a tensor bound per call
    for pos, (n, ex) in enumerate(zip(placeholders, example_inputs)):
        if not isinstance(ex, torch.Tensor):
            size = _size_plan(n, dims, leaf_of)
            plan.append(size if size is not None else _fixed(ex))
            in_leaves.append(SymLeaf(_size_expr(n)) if size is not None else ConstLeaf(_hint(ex)))
            continue
        if _is_python_scalar(n):  # baked in: export then sees a constant, not data to guard on
            value = ex.item()
            plan.append(_Size(partial(torch.tensor, value, dtype=ex.dtype), ()))
            in_leaves.append(ConstLeaf(value))
            continue
        plan.append(len(leaves))
        leaves.append(ex)
        if _is_state(n, ex):
            name = _fqn_from_source(_source_name(n)) or n.name
            roles.append(AsParam(name, ex))
            in_leaves.append(ParamLeaf(name))
        elif _is_call_state(n, ex) and not _dynamic_shape(n):
            # a KV cache the call passes in (HF StaticCache): state, bound per call. One whose size Dynamo
            # made dynamic (a DynamicCache grows every step and is replaced, not written) is an input:
            # as state its size would be baked into a graph that Dynamo reuses for other sizes
            name = _unique(_state_name(n), [r.name for r in roles if isinstance(r, AsParam)])
            roles.append(AsParam(name, ex))
            in_leaves.append(ParamLeaf(name))
            call_state[pos] = name
        else:
            roles.append(AsInput(_unique(_input_name(n), [r.name for r in roles if isinstance(r, AsInput)])))
            in_leaves.append(TensorLeaf(n_inputs))
            n_inputs += 1
    name = _model_name(gm)
    ep = export_leaves(_DynamoCall(gm, plan), leaves, name,
                       dynamic=[dynamic and isinstance(r, AsInput) for r in roles])
    _, in_spec = flatten_call(tuple(example_inputs), {})
    cap = build_capture_functional(ep, roles, in_spec, in_leaves, name=name, fallback=fallback, frontend="dynamo")
    _bind_sym_leaves(cap, placeholders, example_inputs)
    cap.graph.meta["call_state"] = call_state
    return cap


# ---------------------------------------------------------------------------------------------
# classifying Dynamo placeholders
# ---------------------------------------------------------------------------------------------
def _source_name(n: torch.fx.Node) -> str:
    ga = n.meta.get("grapharg")
    src = getattr(ga, "source", None)
    if src is None:
        return ""
    name = src.name
    return name() if callable(name) else str(name)


def _is_state(n: torch.fx.Node, ex: torch.Tensor) -> bool:
    """A parameter or buffer of a module (Dynamo marks them static inputs)."""
    if isinstance(ex, torch.nn.Parameter):
        return True
    source = _source_name(n)
    return "._parameters[" in source or "._buffers[" in source


# where Dynamo finds the tensors of an HF Cache object: L['kwargs']['past_key_values'].layers[0].keys, ...
_HF_CACHE = re.compile(r"past_key_values|\.layers\[\d+\]\.(keys|values|cumulative_length)\b")


# the hint for a failed capture also names HF's generic cache argument (``kwargs['cache']``)
_HF_CACHE_HINT = re.compile(_HF_CACHE.pattern + r"|\['cache'\]")


def takes_hf_cache(gm: torch.fx.GraphModule) -> bool:
    """Whether a Dynamo graph reads tensors of a Hugging Face cache object (``past_key_values``)."""
    return any(n.op == "placeholder" and _HF_CACHE_HINT.search(_source_name(n)) for n in gm.graph.nodes)


def _is_call_state(n: torch.fx.Node, ex: torch.Tensor) -> bool:
    """A tensor the call passes in that persists across calls and may be written in place: the tensors of a
    Hugging Face cache object (``past_key_values``) and tensors marked with ``torch._dynamo.mark_static_address``
    (what HF's StaticCache does). They become IR params/state bound to the call's tensors on every call."""
    return _HF_CACHE.search(_source_name(n)) is not None or hasattr(ex, "_dynamo_static_input_type")


def _dynamic_shape(n: torch.fx.Node) -> bool:
    """Whether Dynamo traced this placeholder with a symbolic size (its guards accept other sizes)."""
    val = n.meta.get("example_value")
    return isinstance(val, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in val.shape)


def _state_name(n: torch.fx.Node) -> str:
    """``L['kwargs']['past_key_values'].layers[0].keys`` -> ``past_key_values.layers.0.keys``."""
    source = re.sub(r"^[LG]\[[^\]]+\]", "", _source_name(n))
    name = re.sub(r"\['([^']+)'\]|\[(\d+)\]", lambda m: "." + (m[1] or m[2]), source)
    name = re.sub(r"[^\w.]+", "_", name).strip("._")
    return name or n.name


def _is_python_scalar(n: torch.fx.Node) -> bool:
    """A Python float/int Dynamo passes as a 0-d tensor (``specialize_float=False``)."""
    ga = n.meta.get("grapharg")
    return bool(getattr(ga, "pass_arg_as_tensor", False))


_PART = re.compile(r"\._(?:modules|parameters|buffers)\['([^']+)'\]|\.([A-Za-z_]\w*)")


def _fqn_from_source(source: str) -> str:
    """``L['self']._modules['lm_head']._parameters['weight']`` -> ``lm_head.weight``."""
    root = re.match(r"^[LG]\[[^\]]+\](?:\[\d+\])*", source)
    if root is None:
        return ""
    rest = source[root.end():]
    parts = [a or b for a, b in _PART.findall(rest)]
    return ".".join(parts)


def _input_name(n: torch.fx.Node) -> str:
    """``L_kwargs_input_ids_`` -> ``input_ids``."""
    source = _source_name(n)
    keys = re.findall(r"\['([^']+)'\]", source)
    if keys:
        return re.sub(r"\W+", "_", keys[-1])
    name = re.sub(r"^l_(args_|kwargs_)?", "", n.name.lower()).strip("_")
    return name or n.name


def _unique(name: str, taken: Sequence[str]) -> str:
    """``name``, or ``name_1``, ``name_2``... when inputs share a source key (the layers of an HF StaticCache)."""
    if name not in taken:
        return name
    i = 1
    while f"{name}_{i}" in taken:
        i += 1
    return f"{name}_{i}"


def _tensor_dims(placeholders: Sequence[torch.fx.Node]) -> dict[sympy.Symbol, tuple[int, int]]:
    """Dynamo's size symbol -> (placeholder position, dim) of a tensor input that has it as a dim."""
    out: dict[sympy.Symbol, tuple[int, int]] = {}
    for pos, n in enumerate(placeholders):
        val = n.meta.get("example_value")
        if not isinstance(val, torch.Tensor):
            continue
        for d, size in enumerate(val.shape):
            if isinstance(size, torch.SymInt):
                e = size.node.expr
                if isinstance(e, sympy.Symbol) and e not in out:
                    out[e] = (pos, d)
    return out


def _size_expr(n: torch.fx.Node) -> sympy.Expr:
    val = n.meta.get("example_value")
    return val.node.expr if isinstance(val, torch.SymInt) else sympy.Integer(int(val))


def _size_plan(n: torch.fx.Node, dims: dict[sympy.Symbol, tuple[int, int]],
               leaf_of: dict[int, int]) -> Optional[_Size]:
    """How to recompute a SymInt placeholder from tensor sizes, or None to specialise on its value."""
    val = n.meta.get("example_value")
    if not isinstance(val, torch.SymInt):
        return None
    e = val.node.expr
    free = sorted(e.free_symbols, key=lambda s: s.name)
    if not all(s in dims and dims[s][0] in leaf_of for s in free):
        return None
    fn = sympy.lambdify(free, e, modules="math") if free else (lambda: int(e))
    return _Size(fn, tuple((leaf_of[dims[s][0]], dims[s][1]) for s in free))


def _hint(ex: Any) -> Any:
    """The concrete value of an example input (a SymInt's example size)."""
    return int(ex.node.hint) if isinstance(ex, torch.SymInt) else ex


def _fixed(ex: Any) -> _Size:
    """A non-tensor placeholder specialised on its example value."""
    value = _hint(ex)
    return _Size(lambda: value, ())


def _model_name(gm: torch.fx.GraphModule) -> str:
    """The class of the module Dynamo traced (the root of the nodes' module stacks), for names and messages."""
    best: Optional[tuple[int, str]] = None
    for n in gm.graph.nodes:
        for path, cls in (n.meta.get("nn_module_stack") or {}).values():
            depth = str(path).count(".")
            name = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", "")
            if name and (best is None or depth < best[0]):
                best = (depth, name)
    return best[1] if best is not None else "dynamo_graph"


def _bind_sym_leaves(cap: Capture, placeholders: Sequence[torch.fx.Node], example_inputs: Sequence[Any]) -> None:
    """Rewrite SymInt leaves from Dynamo's symbols to the IR's: the size they equal in the graph inputs."""
    dims = _tensor_dims(placeholders)
    tensor_leaf = {pos: leaf for pos, leaf in enumerate(cap.in_leaves) if isinstance(leaf, TensorLeaf)}
    ours: dict[sympy.Symbol, sympy.Expr] = {}
    for s, (pos, d) in dims.items():
        leaf = tensor_leaf.get(pos)
        if leaf is not None:
            ours[s] = cap.input_types[leaf.index].shape[d]
    leaves = list(cap.in_leaves)
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, SymLeaf):
            if leaf.expr.free_symbols <= set(ours):
                leaves[i] = SymLeaf(leaf.expr.xreplace(ours))
            else:
                leaves[i] = ConstLeaf(_hint(example_inputs[i]))
    cap.in_leaves = tuple(leaves)
