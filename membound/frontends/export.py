"""The primary frontend: ``torch.export`` -> ATen FX graph -> membound IR.

    cap = capture_export(model, (), {"input_ids": ids, "use_cache": False})
    print(cap.graph)                      # graph @LlamaForCausalLM(%input_ids: i64[B, S]) params(...)
    out = cap.unflatten_outputs(run(cap.graph, cap.flatten_inputs((), {"input_ids": ids2, ...})))

The callable is exported through a small wrapper that takes the flattened leaves of the call as
positional arguments (so any call structure, kwargs included, exports the same way); with
``dynamic=True`` every dim of every tensor leaf is ``Dim.AUTO``, so export itself decides which dims
may vary (it specialises dims of size 0/1 and any dim the code pins down) instead of failing.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import sys
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import sympy
import torch
import torch.utils._pytree as pytree
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from membound.frontends.aten_table import TABLE
from membound.frontends.capture import Capture, ConstLeaf, InLeaf, TensorLeaf, flatten_call, leaf_paths
from membound.frontends.errors import CaptureError, UnsupportedOpError
from membound.frontends.ssm import hf_selective_scan_as_linear_scan
from membound.frontends.symbols import SymbolTable
from membound.frontends.translate import (
    AsConstant,
    AsInput,
    AsParam,
    InPlaceAliasError,
    Role,
    Translator,
    bound_sizes,
    output_leaves,
)
from membound.ir.graph import Graph

_PREFIX = "m"  # the wrapped module's attribute name inside _FlatCall


class _FlatCall(torch.nn.Module):
    """Calls ``fn(*args, **kwargs)`` rebuilt from the flat leaves of the call. A module (or the module
    a bound method belongs to) is registered as ``m`` so its parameters keep their FQNs after ``m.``."""

    def __init__(self, fn: Callable[..., Any], spec: pytree.TreeSpec) -> None:
        super().__init__()
        owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module):
            setattr(self, _PREFIX, owner)
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_spec", spec)

    def forward(self, *leaves: Any) -> Any:
        args, kwargs = pytree.tree_unflatten(list(leaves), self._spec)
        return self._fn(*args, **kwargs)


def callable_name(fn: Any) -> str:
    """``LlamaForCausalLM`` for a module, the function's name otherwise."""
    if isinstance(fn, torch.nn.Module):
        return type(fn).__name__
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", type(fn).__name__)
    return f"{type(owner).__name__}.{name}" if owner is not None else name


def capture_export(fn_or_module: Union[torch.nn.Module, Callable[..., Any]], args: Sequence[Any] = (),
                   kwargs: Optional[dict[str, Any]] = None, dynamic: bool = True,
                   fallback: Optional[str] = None, name: Optional[str] = None) -> Capture:
    """Capture ``fn_or_module(*args, **kwargs)`` with ``torch.export`` and translate it to membound IR.

    ``dynamic=True`` marks every tensor dim ``Dim.AUTO``; the resulting symbols are named ``B`` (dim 0
    of the first tensor), ``S`` (its dim 1) and ``D0, D1, ...``. ``fallback="torch"`` turns ops with
    no IR mapping into explicit ``torch_call`` nodes instead of raising ``UnsupportedOpError``; ``name``
    names the graph (default: the module's class or the function's name). Raises ``CaptureError`` when
    the model raises while being traced.
    """
    if fallback not in (None, "torch"):
        raise ValueError(f"fallback must be None or 'torch', got {fallback!r}")
    leaves, spec = flatten_call(args, kwargs)
    name = name or callable_name(fn_or_module)
    ep = export_leaves(_FlatCall(fn_or_module, spec), leaves, name,
                       dynamic=[isinstance(x, torch.Tensor) and dynamic for x in leaves])
    names = _input_names(fn_or_module, spec)
    roles: list[Role] = []
    in_leaves: list[InLeaf] = []
    for x, leaf_name in zip(leaves, names):
        if isinstance(x, torch.Tensor):
            in_leaves.append(TensorLeaf(sum(isinstance(r, AsInput) for r in roles)))
            roles.append(AsInput(leaf_name))
        else:
            in_leaves.append(ConstLeaf(x))
            roles.append(AsConstant(x))
    return build_capture_functional(ep, roles, spec, in_leaves, name=name, fallback=fallback, frontend="export",
                                    default_source=_definition(fn_or_module))


def build_capture_functional(ep: ExportedProgram, *args: Any, **kwargs: Any) -> Capture:
    """:func:`build_capture`; where it refuses an in-place write into a view whose base is read later
    (``InPlaceAliasError``: transformers 4.x builds some masks so, MLA blocks fill halves of a key buffer so), the
    functionalized program (``run_decompositions`` with no decompositions: functional copies and scatters), which
    says the same with value semantics. If that fails too, the original refusal is reported."""
    try:
        return build_capture(ep, *args, **kwargs)
    except InPlaceAliasError as e:
        try:
            # (retraced in a fresh tracing context, as export_leaves exports: inside a torch.compile backend the
            # retrace would otherwise add its symbols and guards to the frame Dynamo is compiling)
            with torch._guards.tracing(None):
                functional = ep.run_decompositions({})
            return build_capture(functional, *args, **kwargs)
        except (UnsupportedOpError, CaptureError) as r:
            if not isinstance(r, UnsupportedOpError) or r.source == e.source:
                raise e from None  # refused at the write itself: the write the user wrote is the clearer message
            # refused further on (Qwen3.5: its rotary write passes, its conv1d does not): the op that stops the
            # capture now, saying the in-place write is not the obstacle
            r.add_note(f"(the in-place write at {e.source or 'an earlier line'} was captured by functionalizing the "
                       "program; this op is the one left)")
            raise r from None


def export_leaves(module: torch.nn.Module, leaves: Sequence[Any], name: str,
                  dynamic: Sequence[bool]) -> ExportedProgram:
    """``torch.export`` of ``module(*leaves)`` with ``Dim.AUTO`` on every dim of the leaves marked dynamic,
    under ``no_grad``; any failure is a ``CaptureError`` naming the model and the original exception."""
    shapes = tuple({i: Dim.AUTO for i in range(x.dim())} if isinstance(x, torch.Tensor) and dyn else None
                   for x, dyn in zip(leaves, dynamic))
    try:
        # a fresh tracing context: inside a torch.compile backend, export must not add its guards to the
        # frame Dynamo is compiling
        with torch.no_grad(), torch._guards.tracing(None), _quiet_specialisation_notes(), _hf_masks_without_vmap(), \
                _hf_moe_blocks_dense(module), _hf_rotary_without_complex(module), \
                hf_selective_scan_as_linear_scan(module):
            # (a graph of no inputs, e.g. a Dynamo subgraph between two breaks that only makes constants, takes no
            # dynamic_shapes: export rejects a dict naming an argument it was not given)
            ep = torch.export.export(module, tuple(leaves), dynamic_shapes={"leaves": shapes} if leaves else None,
                                     strict=False)
    except Exception as e:  # the model's own error or export's; either way the user needs the original
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CaptureError(f"capturing {name} with torch.export failed: {type(e).__name__}: {first}\n"
                           f"{_data_dependent_hint(e)}  (the original exception is chained below)") from e
    _strip_wrapper_from_module_stacks(ep)
    return ep


# where torch.export's data-dependent errors name the user's line ("The following call raised this error:" then a
# traceback entry and its code)
_RAISED_AT = re.compile(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+), in (\S+)\n\s*(.+)')


def _data_dependent_hint(e: BaseException) -> str:
    """For an export failure on control flow that depends on tensor values (a Python branch or loop over a
    ``nonzero``, ``.item()`` or a sum, as MoE blocks that visit only the experts hit do): the model's line, taken
    from torch's message, and what to do. Empty for other failures."""
    text = str(e)
    if "data-dependent" not in text and "DataDependent" not in type(e).__name__:
        return ""
    at = _RAISED_AT.search(text)
    where = (f" at {os.path.basename(at.group(1))}:{at.group(2)} in {at.group(3)}: `{at.group(4).strip()}`"
             if at else "")
    return (f"  The model branches or loops on a value computed from its inputs{where}. membound captures one graph "
            f"of fixed structure: write that code without a data-dependent branch (an MoE block: compute every "
            f"expert, or each token's k experts by gathering their weights, and weight the outputs by the routing, "
            f"as transformers 5.x's experts implementations do), or compile the model with torch.compile(model, "
            f"backend=\"membound\"), which runs that code eagerly and compiles the graphs around it.\n")


def build_capture(ep: ExportedProgram, roles: Sequence[Role], in_spec: pytree.TreeSpec,
                  in_leaves: Sequence[InLeaf], *, name: str, fallback: Optional[str], frontend: str,
                  default_source: str = "") -> Capture:
    """Translate an exported program whose user inputs play ``roles`` (one per flat leaf) into a Capture."""
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    specs = ep.graph_signature.input_specs
    shape_env = _shape_env(placeholders)
    symbols = SymbolTable(shape_env)
    node_roles: dict[torch.fx.Node, Role] = {}
    user_roles = iter(roles)
    # the device of the model's own tensors: a constant its code makes with torch.tensor(...) (Gemma 3n's) is lifted
    # on the CPU whatever the model's device; eager torch takes a 0-d CPU tensor beside CUDA ones, a kernel cannot
    homes = {_state_tensor(ep, s).device for s in specs if s.kind in (InputKind.PARAMETER, InputKind.BUFFER)}
    home = next(iter(homes)) if len(homes) == 1 else None
    for node, ispec in zip(placeholders, specs):
        if ispec.kind == InputKind.USER_INPUT:
            node_roles[node] = next(user_roles)
        elif ispec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            tensor = _state_tensor(ep, ispec)
            if ispec.kind == InputKind.CONSTANT_TENSOR and home is not None and tensor.device != home:
                tensor = tensor.to(home)
            node_roles[node] = AsParam(_fqn(ispec.target), tensor, constant=ispec.kind == InputKind.CONSTANT_TENSOR)
        else:
            raise CaptureError(f"{name}: export produced a {ispec.kind.name} input ({ispec.arg}); membound "
                               "supports tensor inputs, parameters, buffers and constants")
    symbols.name_inputs([n.meta["val"].shape for n in placeholders if isinstance(node_roles[n], AsInput)])

    graph = Graph(_graph_name(name))
    translator = Translator(graph, symbols, TABLE, fallback, default_source)
    translator.ranges = symbols.ranges(ep.range_constraints)
    outputs = translator.run(ep.graph, node_roles)

    user_outputs = []
    for ospec, value in zip(ep.graph_signature.output_specs, outputs):
        if ospec.kind == OutputKind.USER_OUTPUT:
            user_outputs.append(value)
        else:
            target = ospec.target or ospec.arg
            raise CaptureError(f"{name} writes {target} in place ({ospec.kind.name}); membound captures pure "
                               "functions of their inputs: keep such state outside the model call, or use a "
                               "membound KV-cache")
    out_spec = ep.call_spec.out_spec
    values, out_leaves = output_leaves(user_outputs, leaf_paths(out_spec, call=False), name)
    graph.set_outputs(values)
    graph.remove_unused_params()  # e.g. HF's original_inv_freq: registered, never read
    inputs = [n for n in placeholders if isinstance(node_roles[n], AsInput)]
    cap = Capture(graph=graph, in_spec=in_spec, in_leaves=tuple(in_leaves), out_spec=out_spec,
                  out_leaves=tuple(out_leaves), devices=tuple(n.meta["val"].device for n in inputs),
                  ranges=translator.ranges, guards=tuple(_guards(translator.guards)),
                  frontend=frontend, name=name)
    bound_sizes(cap.out_leaves, leaf_paths(out_spec, call=False), cap.input_symbols(), name)
    return cap


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _shape_env(placeholders: Sequence[torch.fx.Node]) -> Any:
    for n in placeholders:
        val = n.meta.get("val")
        mode = getattr(val, "fake_mode", None)
        if mode is not None:
            return mode.shape_env
    return None


def _fqn(target: str) -> str:
    """``m.model.layers.0.weight`` -> ``model.layers.0.weight`` (drop the wrapper's attribute)."""
    return target[len(_PREFIX) + 1:] if target.startswith(_PREFIX + ".") else target


def _state_tensor(ep: ExportedProgram, ispec: Any) -> torch.Tensor:
    """The model's own tensor for a parameter/buffer/constant (by reference, never a copy)."""
    target = ispec.target
    if target in ep.state_dict:
        return ep.state_dict[target]
    return ep.constants[target]


def _strip_wrapper_from_module_stacks(ep: ExportedProgram) -> None:
    """Module paths as the user knows them: drop the wrapper level and its ``m.`` prefix."""
    for n in ep.graph.nodes:
        stack = n.meta.get("nn_module_stack")
        if not stack:
            continue
        fixed = {}
        for key, (path, cls) in stack.items():
            if path == "":
                continue  # the wrapper itself
            if path == _PREFIX:
                path = ""
            elif path.startswith(_PREFIX + "."):
                path = path[len(_PREFIX) + 1:]
            fixed[key] = (path, cls)
        n.meta["nn_module_stack"] = fixed


def _input_names(fn: Any, spec: pytree.TreeSpec) -> list[str]:
    """Readable graph input names from the call's structure: ``input_ids``, ``x``, ``cache_0``."""
    try:
        target = fn.forward if isinstance(fn, torch.nn.Module) else fn
        params = [p.name for p in inspect.signature(target).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    out: list[str] = []
    for path in leaf_paths(spec):
        m = re.match(r"args\[(\d+)\](.*)", path)
        if m:
            i = int(m.group(1))
            path = (params[i] if i < len(params) else f"arg{i}") + m.group(2)
        elif path.startswith("kwargs"):
            path = path[len("kwargs"):]
        name = re.sub(r"[^0-9A-Za-z_]+", "_", path).strip("_") or "input"
        if name[0].isdigit():
            name = "x" + name
        while name in out:
            name += "_"
        out.append(name)
    return out


def _definition(fn: Any) -> str:
    """Where a plain function is defined: export records source lines only inside ``Module.forward``."""
    if isinstance(fn, torch.nn.Module):
        return ""
    code = getattr(fn, "__code__", None)
    if code is None:
        return ""
    return f"{code.co_filename}:{code.co_firstlineno} in {code.co_name} (the function's first line; torch.export " \
           "records exact lines only inside nn.Module.forward)"


def _graph_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", name) or "main"


def _guards(conds: Sequence[sympy.Basic]) -> list[sympy.Basic]:
    """Runtime asserts worth checking on reuse (those over input sizes; others are already implied)."""
    return [c for c in conds if isinstance(c, sympy.Basic) and c is not sympy.true]


@contextlib.contextmanager
def _hf_masks_without_vmap() -> Iterator[None]:
    """transformers 4.5x builds its attention masks by ``torch.vmap`` of a mask function over (batch, head, query,
    key) indices, which torch.export writes as higher-order ops (``flat_apply``) that membound does not translate.
    While exporting (restored after), its ``sdpa_mask`` is replaced by :func:`_hf_mask_by_broadcast`, which calls
    the same mask function once on broadcast index tensors (what 5.x does by default). Releases without
    ``sdpa_mask_recent_torch`` (5.x) are left alone."""
    mu = sys.modules.get("transformers.masking_utils")
    if mu is None or not hasattr(mu, "sdpa_mask_recent_torch"):
        yield
        return
    mapping = mu.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    saved = mu.sdpa_mask, mapping.get("sdpa")
    mu.sdpa_mask = _hf_mask_by_broadcast  # (eager_mask calls it by this name)
    mapping["sdpa"] = _hf_mask_by_broadcast
    try:
        yield
    finally:
        mu.sdpa_mask = saved[0]
        if saved[1] is not None:
            mapping["sdpa"] = saved[1]


def _hf_mask_by_broadcast(batch_size: int, cache_position: torch.Tensor, kv_length: int, kv_offset: int = 0,
                          mask_function: Optional[Callable[..., Any]] = None,
                          attention_mask: Optional[torch.Tensor] = None, local_size: Optional[int] = None,
                          allow_is_causal_skip: bool = True, **kwargs: Any) -> Optional[torch.Tensor]:
    """transformers 4.5x's boolean ``[B, 1, Q, KV]`` sdpa mask (True = attend) without vmap: the mask function (causal,
    sliding window, chunked, padding, and their and/or combinations: comparisons and indexing that broadcast) is
    called once with index tensors shaped ``[B, 1, 1, 1]``, ``[1, 1, 1, 1]``, ``[1, 1, Q, 1]`` and ``[1, 1, 1, KV]``."""
    mu = sys.modules["transformers.masking_utils"]
    mask_function = mask_function or mu.causal_mask_function
    q_length = cache_position.shape[0]
    padding_mask = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset, _slice=False)
    if allow_is_causal_skip and mu._ignore_causal_mask_sdpa(padding_mask, q_length, kv_length, kv_offset, local_size):
        return None
    device = cache_position.device
    kv = torch.arange(kv_length, device=device) + kv_offset
    if padding_mask is not None:
        mask_function = mu.and_masks(mask_function, mu.padding_mask_function(padding_mask))
    rows = torch.arange(batch_size, device=device)[:, None, None, None]
    heads = torch.zeros((1, 1, 1, 1), dtype=torch.long, device=device)
    mask = mask_function(rows, heads, cache_position[None, None, :, None], kv[None, None, None, :])
    return mask.expand(batch_size, 1, q_length, kv_length)


# transformers 4.x mixture-of-experts blocks: a ModuleList of gated MLPs run on the tokens each expert was routed,
# found by nonzero / where (data-dependent sizes torch.export cannot trace); 5.x writes them as grouped products
_HF4_MOE_BLOCKS = ("MixtralSparseMoeBlock", "Qwen2MoeSparseMoeBlock", "Qwen3MoeSparseMoeBlock", "OlmoeSparseMoeBlock")
# ... and Granite-MoE's: experts as two [E, *, *] parameters, token groups sized with .tolist()
_HF4_GRANITE_MOE = ("GraniteMoeMoE", "GraniteMoeSharedMoE")
# ... and gpt-oss's experts (4.55-4.57), which loop over the experts hit (nonzero) on the CPU and in training
_HF4_GPT_OSS_EXPERTS = ("GptOssExperts",)
# transformers releases before the experts-implementation hook reached LongCat-Flash (5.17): its experts module loops
# over the experts hit and runs the zero (identity) experts itself
_HF_LONGCAT_LOOPED_EXPERTS = ("LongcatFlashExperts",)


@contextlib.contextmanager
def _hf_moe_blocks_dense(module: torch.nn.Module) -> Iterator[None]:
    """While exporting (restored after), each transformers 4.x MoE block of ``module`` (Mixtral, Qwen2-MoE, Qwen3-MoE,
    OLMoE: ``_HF4_MOE_BLOCKS``, at inference) runs :func:`_hf_moe_dense_forward`, the same routing with every
    expert weighted by ``where(ids == e, weights, 0)``: a graph of fixed shape that fuse-moe's looped form turns into
    one ``moe`` op. Blocks of other releases (5.x's experts are one module of 3-D weights), a block in training
    with router jitter, and classes outside ``transformers`` are left alone. Granite-MoE's block (``_HF4_GRANITE_MOE``)
    runs :func:`_hf_granite_moe_dense_forward`, 4.x gpt-oss's experts (``_HF4_GPT_OSS_EXPERTS``)
    :func:`_hf_gpt_oss_routed_forward`."""
    swapped = []
    for sub in module.modules():
        cls = type(sub)
        if not cls.__module__.startswith("transformers.models.") or "forward" in vars(sub):
            continue
        if (cls.__name__ in _HF4_MOE_BLOCKS and isinstance(getattr(sub, "experts", None), torch.nn.ModuleList)
                and isinstance(getattr(sub, "gate", None), torch.nn.Linear)
                and isinstance(getattr(sub, "top_k", None), int)
                and not (sub.training and getattr(sub, "jitter_noise", 0))):
            sub.forward = _hf_moe_dense_forward.__get__(sub, cls)
            swapped.append(sub)
        elif (cls.__name__ in _HF4_GRANITE_MOE and isinstance(getattr(getattr(sub, "router", None), "layer", None),
                                                              torch.nn.Linear)
                and all(getattr(getattr(sub, n, None), "weight", None) is not None
                        for n in ("input_linear", "output_linear"))):
            sub.forward = _hf_granite_moe_dense_forward.__get__(sub, cls)
            swapped.append(sub)
        elif (cls.__name__ in _HF4_GPT_OSS_EXPERTS and not sub.training and _transformers_major() == 4
                and all(getattr(getattr(sub, n, None), "dim", lambda: 0)() == 3 for n in ("gate_up_proj", "down_proj"))
                and "routing_weights" in inspect.signature(cls.forward).parameters):
            sub.forward = _hf_gpt_oss_routed_forward.__get__(sub, cls)
            swapped.append(sub)
        elif (cls.__name__ in _HF_LONGCAT_LOOPED_EXPERTS and not sub.training
                and all(hasattr(sub, n) for n in ("total_experts", "num_routed_experts", "identity_expert"))
                and getattr(sub, "gate_up_proj", None) is not None):
            sub.forward = _hf_longcat_routed_forward.__get__(sub, cls)
            swapped.append(sub)
    try:
        yield
    finally:
        for sub in swapped:
            del sub.forward


def _hf_moe_dense_forward(self: Any, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 4.x MoE block's forward, equal to its own: softmax in fp32, top-k, renormalised where the block does
    (Mixtral always, the others by ``norm_topk_prob``), cast back; then, expert by expert in index order, the
    expert's output on every token times its weight (0 where not routed, so the sum adds exactly the products the
    sparse loop's ``index_add_`` adds, in the same order); Qwen2-MoE's sigmoid-gated shared expert added last.
    Returns ``(hidden, router_logits)`` as the block does."""
    batch, seq, dim = hidden_states.shape
    h = hidden_states.view(-1, dim)
    router_logits = self.gate(h)
    weights = torch.nn.functional.softmax(router_logits, dim=1, dtype=torch.float)
    weights, ids = torch.topk(weights, self.top_k, dim=-1)
    if getattr(self, "norm_topk_prob", True):
        weights = weights / weights.sum(dim=-1, keepdim=True)
    weights = weights.to(h.dtype)
    out = torch.zeros((batch * seq, dim), dtype=h.dtype, device=h.device)
    for e, expert in enumerate(self.experts):
        w = torch.where(ids == e, weights, torch.zeros_like(weights)).sum(dim=-1, keepdim=True)
        out = out + (expert(h) * w).to(h.dtype)
    if hasattr(self, "shared_expert") and hasattr(self, "shared_expert_gate"):
        out = out + torch.nn.functional.sigmoid(self.shared_expert_gate(h)) * self.shared_expert(h)
    return out.reshape(batch, seq, dim), router_logits


def _hf_granite_moe_dense_forward(self: Any, layer_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers 4.x Granite-MoE's block (``GraniteMoeMoE``), equal to its own: the router's fp32 logits, top-k,
    softmax over the k, cast back; then, expert by expert in index order (the order its sorted groups add a token's
    outputs in), ``act(x W_in[e]^T [:I]) * (x W_in[e]^T [I:])`` through ``W_out[e]``, times the token's weight for
    that expert (0 where not routed); fuse-moe's looped form takes the experts, slices of two ``[E, *, *]``
    parameters, as views of them."""
    batch, seq, dim = layer_input.shape
    x = layer_input.reshape(-1, dim)
    logits = self.router.layer(x).float()
    top_logits, ids = logits.topk(self.router.top_k, dim=1)
    gates = torch.softmax(top_logits, dim=1).type_as(x)
    out = torch.zeros((batch * seq, dim), dtype=x.dtype, device=x.device)
    for e in range(self.input_linear.weight.shape[0]):
        w = torch.where(ids == e, gates, torch.zeros_like(gates)).sum(dim=-1, keepdim=True)
        gate, up = torch.nn.functional.linear(x, self.input_linear.weight[e]).chunk(2, dim=-1)
        y = torch.nn.functional.linear(self.activation(gate) * up, self.output_linear.weight[e])
        out = out + y * w
    return out.view(batch, seq, dim), logits


def _transformers_major() -> int:
    """The major version of the loaded ``transformers`` (0 when it is not loaded: no HF module to swap)."""
    mod = sys.modules.get("transformers")
    try:
        return int(str(getattr(mod, "__version__", "0")).split(".")[0])
    except ValueError:
        return 0


def _hf_gpt_oss_routed_forward(self: Any, hidden_states: torch.Tensor, router_indices: Any = None,
                               routing_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """transformers 4.x gpt-oss experts (``GptOssExperts``), equal to their own: each token's top-k experts (the
    ``router_indices``), their weights gathered from the ``[T, E]`` scores ``routing_weights``, each pair's
    interleaved gate/up product with its bias, the clamped SwiGLU, the down product with its bias, weighted and
    summed over the k: the form of 5.x's ``batched_mm`` experts, which fuse-moe makes one ``moe``. (The CPU branch
    of 4.x sums the pairs in expert order, this one in slot order: fp32 sums of k terms, rounding apart.) Their CPU
    branch loops over the experts hit (``nonzero``), whose data-dependent sizes torch.export cannot trace; their
    GPU branch runs every expert on every token."""
    batch = hidden_states.shape[0]
    h = hidden_states.reshape(-1, self.hidden_size)
    k = router_indices.shape[-1]
    ids = router_indices.reshape(-1, k)
    weights = routing_weights.gather(1, ids)  # [T, k]
    flat = ids.reshape(-1)
    x = h.unsqueeze(1).expand(-1, k, -1).reshape(-1, self.hidden_size)  # each token k times
    gate_up = (x.unsqueeze(1) @ self.gate_up_proj[flat]).squeeze(1) + self.gate_up_proj_bias[flat]
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    gate = gate.clamp(min=None, max=self.limit)
    up = up.clamp(min=-self.limit, max=self.limit)
    glu = gate * torch.sigmoid(gate * self.alpha)
    out = (((up + 1) * glu).unsqueeze(1) @ self.down_proj[flat]).squeeze(1) + self.down_proj_bias[flat]
    out = out * weights.reshape(-1).unsqueeze(-1)
    return out.view(-1, k, self.hidden_size).sum(dim=1).to(h.dtype).view(batch, -1, self.hidden_size)


def _hf_longcat_routed_forward(self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                               top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers 5.17 LongCat-Flash experts (``LongcatFlashExperts``, ``total_experts`` of them, the last
    ``zero_expert_num`` identities), equal to their own: the identity slots' weights summed and applied to the input;
    the routed slots in the form of later releases' ``batched_mm`` experts (each token's k experts' weights gathered,
    gate and up halves of one product, the activation, the down product, weighted and summed over the k; an identity
    slot reads expert 0 with weight 0), which fuse-moe makes one ``moe_experts``. Their own forward loops over the
    experts hit (``nonzero``), whose data-dependent sizes torch.export cannot trace. (They add the pairs in expert
    order, this in slot order: rounding apart.)"""
    routed = self.num_routed_experts
    tokens, k = top_k_index.shape
    identity = top_k_index >= routed
    identity_weights = top_k_weights.masked_fill(~identity, 0.0).sum(dim=-1, keepdim=True)
    ids = torch.where(identity, torch.zeros_like(top_k_index), top_k_index).reshape(-1)
    weights = top_k_weights.masked_fill(identity, 0.0).reshape(-1)
    x = hidden_states.repeat_interleave(k, dim=0)  # each token k times
    gate, up = torch.bmm(self.gate_up_proj[:routed][ids], x.unsqueeze(-1)).squeeze(-1).chunk(2, dim=-1)
    out = torch.bmm(self.down_proj[ids], (self.act_fn(gate) * up).unsqueeze(-1)).squeeze(-1)
    out = (out * weights.unsqueeze(-1)).view(tokens, k, -1).sum(dim=1)
    return out.to(hidden_states.dtype) + (hidden_states * identity_weights).to(hidden_states.dtype)


# Hugging Face families whose rotary embedding is a complex tensor (``torch.polar``, ``view_as_complex``): the module
# defining them -> how its ``apply_rotary_emb`` broadcasts the frequencies over q / k ``[B, ., ., D]``
_HF_COMPLEX_ROTARY = {"transformers.models.deepseek_v2.modeling_deepseek_v2": lambda f: f.unsqueeze(1),
                      "transformers.models.llama4.modeling_llama4": lambda f: f[:, :, None]}


@contextlib.contextmanager
def _hf_rotary_without_complex(module: torch.nn.Module) -> Iterator[None]:
    """While exporting (restored after), the complex rotary embedding of the families in ``_HF_COMPLEX_ROTARY``
    (DeepSeek-V2, Llama 4: ``freqs_cis = polar(1, f) * scaling``, then ``view_as_real(view_as_complex(x) *
    freqs_cis)``; the IR has no complex dtype) runs as the same arithmetic on real tensors: the embedding returns
    ``(cos f, sin f) * scaling`` stacked in a last dim of 2 (the complex value's two parts), and the module's
    ``apply_rotary_emb`` rotates each (even, odd) pair as the complex product does, ``(a c - b s, a s + b c)`` in
    fp32, rounded back to x's dtype. Modules outside those families are left alone."""
    patched: list[tuple[Any, str, Any]] = []
    for sub in module.modules():
        mod = sys.modules.get(type(sub).__module__)
        if (type(sub).__module__ not in _HF_COMPLEX_ROTARY or not type(sub).__name__.endswith("RotaryEmbedding")
                or "forward" in vars(sub) or mod is None or not callable(getattr(mod, "apply_rotary_emb", None))):
            continue
        sub.forward = _real_rotary_forward.__get__(sub, type(sub))
        patched.append((sub, "forward", None))
        if not any(m is mod for m, _, _ in patched):
            spread = _HF_COMPLEX_ROTARY[type(sub).__module__]
            patched.append((mod, "apply_rotary_emb", mod.apply_rotary_emb))
            mod.apply_rotary_emb = _real_apply_rotary_emb(spread)
    try:
        yield
    finally:
        for owner, name, old in reversed(patched):
            if old is None:
                delattr(owner, name)
            else:
                setattr(owner, name, old)


def _real_rotary_forward(self: Any, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """``polar(1, f) * attention_scaling`` as its real and imaginary parts, ``[..., D/2, 2]``."""
    freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
    return torch.stack([torch.cos(freqs), torch.sin(freqs)], dim=-1) * self.attention_scaling


def _real_apply_rotary_emb(spread: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    """An ``apply_rotary_emb(xq, xk, freqs)`` over the real ``[..., D/2, 2]`` frequencies, broadcast over q / k as
    ``spread`` says the family's complex one is."""
    def apply_rotary_emb(xq: torch.Tensor, xk: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = spread(freqs.to(xq.device))
        c, s = f[..., 0], f[..., 1]

        def rotate(x: torch.Tensor) -> torch.Tensor:
            pairs = x.float().reshape(*x.shape[:-1], -1, 2)
            a, b = pairs[..., 0], pairs[..., 1]
            return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(3).type_as(x)

        return rotate(xq), rotate(xk)

    return apply_rotary_emb


class _SpecialisationNoteFilter(logging.Filter):
    """Drops export's note that a size-1 dim was specialised: with ``Dim.AUTO`` that is expected, and
    ``Capture.matches`` sends calls with other sizes to a new capture."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "specialized; Dim.AUTO was specified" not in record.getMessage()


@contextlib.contextmanager
def _quiet_specialisation_notes() -> Iterator[None]:
    logger = logging.getLogger("torch._export.non_strict_utils")
    note = _SpecialisationNoteFilter()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)
