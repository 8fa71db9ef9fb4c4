"""quantize-weights: linears over parameter weights read int8 / int4 / fp8 weights instead (opt-in).

```
// before (a decode step's projection, bf16 weight: 2 bytes per weight)
graph @f(%x: bf16[B, 1, 4096]) params(%w: bf16[14336, 4096]) {
  %y = linear(%x, %w) : bf16[B, 1, 14336]
  return %y
}
// after, scheme int4 with group_size 128 (0.5 byte per weight + 4 bytes of scale and offset per group)
graph @f(%x: bf16[B, 1, 4096]) params(%w.qweight: u8[14336, 2048], %w.scales: bf16[14336, 32, 2]) {
  %y = quant_linear(%x, %w.qweight, %w.scales) {scheme="int4", group_size=128, in_features=4096} : bf16[B, 1, 14336]
  return %y
}
```

Matches ``linear(x, W[, bias])``, ``gated_linear(gate, up, W)`` and ``matmul(x, W[K, N])`` (GPT-2's
Conv1D, quantized as ``W.T``) whose weight is a 2-D float parameter
holding a tensor, whose name matches none of the config's ``skip`` patterns (``fnmatch`` patterns on
the parameter name, e.g. ``"*lm_head*"``). The packed weight and its scales become new parameters
``<name>.qweight`` / ``<name>.scales``; a float weight nobody else reads is dropped (a tied embedding
table keeps its float copy for the gather). A weight read by several linears is quantized once.

A ``moe`` over parameter experts becomes ``quant_moe`` over the same scheme's packed experts (each
``[E, N, K]`` weight quantized as its E * N rows: codes ``<name>.qweight``, scales ``<name>.scales``, a
leading E on both); its router and shared expert stay float. A ``moe_experts`` (the experts of a routing the graph
computes: DeepSeek, GLM-4.5) becomes ``quant_moe_experts`` the same way, and a linear whose scores feed the top-k
of such a routing (its router) stays float: quantized, it could pick other experts.

```
// before: %y = moe(%x, %router, %wg, %wu, %wd) {top_k=2, ...}     (%wg: bf16[8, 14336, 4096])
// after, int4 group 128:
//   %y = quant_moe(%x, %router, %wg.qweight, %wg.scales, ...) {top_k=2, ..., scheme="int4", group_size=128}
//   (%wg.qweight: u8[8, 14336, 2048], %wg.scales: bf16[8, 14336, 32, 2])
```

Formats are those of ``membound.ir.ops.quant`` (int8 per-channel symmetric, int4 group-wise with
scale and offset, fp8 e4m3 per-channel). Quantization runs once per compile; ``QuantConfig.cache``
(shared by every capture of one compiled model) keeps the packed tensors so that recaptures and the
prefill/decode graphs of ``generate`` reuse them, and ``QuantConfig.store`` supplies packed tensors
saved earlier (``membound.save_quantized``) instead of quantizing again.

When it fires: only when asked (``membound.compile(model, quantize=...)``), and then per linear when
the cost model (``ctx.cost``) estimates the quantized op faster than the float one at the decode
step's dims (every symbolic dim 1, or as ``ctx.decode_dims`` sets them): fewer weight bytes
against the dequantization FLOPs. Without a cost model it fires for every matched linear. Which
kernel runs at which batch (fused dequantizing GEMV/GEMM, or dequantize-then-cuBLAS at prefill) is
the backend's choice at run time, from the same roofline figures.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from membound.ir import Graph, Node, Value
from membound.ir.ops.moe import QUANT_MOE_SCHEMES
from membound.ir.ops.quant import SCHEMES, check_scheme, dequantize, num_groups, quantize
from membound.ir.types import TensorType, dtype_name
from membound.passes.gemv_regime import decode_dims, seconds
from membound.passes.manager import PassContext, register_pass
from membound.passes.options import pass_options

DEFAULT_GROUP_SIZE = 128


@dataclass
class QuantConfig:
    """What to quantize and how.

    ``scheme``: ``"int8"`` | ``"int4"`` | ``"fp8"``. ``group_size``: int4's group along K (32/64/128...).
    ``skip``: ``fnmatch`` patterns on parameter names left in float (``("*lm_head*",)``); the default
    policy skips nothing: every linear over a parameter weight is quantized where the cost model says
    it pays, the output head included (at 1.24B it is a fifth of the bytes a token streams). Skip it when
    the accuracy report (``membound.explain(..., quantize=...)``) says its error is too large.
    """

    scheme: str = "int8"
    group_size: int = DEFAULT_GROUP_SIZE
    skip: tuple[str, ...] = ()
    # packed tensors per float weight, shared across captures: (id, version, scheme, group) -> (q, s)
    cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)
    # packed tensors loaded from disk, by float parameter name (membound.load_quantized)
    store: Optional[dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_scheme(self.scheme, self.group_size if self.scheme == "int4" else None, "QuantConfig")
        if isinstance(self.skip, str):
            self.skip = (self.skip,)
        self.skip = tuple(self.skip)
        if not all(isinstance(p, str) for p in self.skip):
            raise TypeError(f"QuantConfig: skip must be name patterns (strings), got {self.skip!r}")

    @property
    def effective_group_size(self) -> int:
        return self.group_size if self.scheme == "int4" else 0

    def skips(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.skip)


def as_quant_config(quantize: Union[None, str, QuantConfig]) -> Optional[QuantConfig]:
    """``membound.compile(quantize=...)``'s argument as a config (None: no quantization)."""
    if quantize is None or isinstance(quantize, QuantConfig):
        return quantize
    if isinstance(quantize, str):
        if quantize not in SCHEMES:
            raise ValueError(f"quantize={quantize!r}: expected one of {SCHEMES}, a membound.QuantConfig, or None")
        return QuantConfig(scheme=quantize)
    raise TypeError(f"quantize must be one of {SCHEMES}, a membound.QuantConfig or None, got {quantize!r}")


# linears with a neighbour folded in (fuse-linear-glu, fuse-linear-residual, fuse-norm-linear, fuse-rope-linear): no
# quantized form; a pipeline that runs those passes first leaves them in float, and the pass log says so
_FUSED_FORMS = ("linear_glu", "linear_add", "gated_linear_add", "rms_norm_linear", "rms_norm_linear_sumsq",
                "linear_add_sumsq", "gated_linear_add_sumsq", "linear_rope", "rms_norm_linear_rope_sumsq",
                "rms_norm_linear_glu_sumsq")
# where each matched op keeps its weight; ``matmul(x, W[K, N])`` (GPT-2's Conv1D) is linear(x, W.T)
_WEIGHT_INDEX = {"linear": 1, "gated_linear": 2, "matmul": 1}
QUANT_EXPERT_OPS = ("quant_moe", "quant_moe_experts")  # the quantized forms of moe and moe_experts


def _candidate(node: Node, config: QuantConfig) -> Optional[Value]:
    """The weight of a linear this pass can quantize, else None."""
    index = _WEIGHT_INDEX.get(node.op)
    if index is None:
        return None
    w = node.inputs[index]
    if w.kind != "param" or w.rank != 2 or not w.dtype.is_floating_point:
        return None
    if w.dtype == torch.float64 or config.skips(w.name):
        return None
    if node.op == "matmul" and (node.inputs[0].rank < 2 or node.inputs[0].dtype != w.dtype):
        return None
    return w


ROUTER_PATH = ("cast", "sigmoid", "softmax", "add", "reshape", "view", "where", "mul", "div")  # scores to a top-k


def _routes(node: Node, depth: int = 4) -> bool:
    """Whether ``node``'s result reaches a ``topk`` through at most ``depth`` score-shaping ops (:data:`ROUTER_PATH`):
    an MoE router the graph computes itself (DeepSeek-V3: linear, sigmoid, plus a correction bias, top-k)."""
    frontier = [node]
    for _ in range(depth + 1):
        users = [u for n in frontier for v in n.results for u in v.users]
        if any(u.op == "topk" for u in users):
            return True
        frontier = [u for u in users if u.op in ROUTER_PATH]
        if not frontier:
            return False
    return False


def _nk(node: Node, w: Value) -> tuple[int, int]:
    """(N, K) of the linear that ``node`` computes with weight ``w``."""
    a, b = (int(d) for d in w.shape)
    return (b, a) if node.op == "matmul" else (a, b)


def _packed(graph: Graph, w: Value, transposed: bool, config: QuantConfig
            ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The packed (qweight, scales) of parameter ``w`` (of ``w.T`` when ``transposed``): from the store,
    the cache, or quantized now."""
    tensor = graph.tensors.get(w.name)
    if tensor is not None and transposed:
        tensor = tensor.t()
    saved = _from_store(graph, w.name, config)
    if saved is not None:
        q, s = saved
        n, k = (int(d) for d in (reversed(w.shape) if transposed else w.shape))
        return _saved_on(w, tensor, q, s, (n, (k + 1) // 2 if config.scheme == "int4" else k), s.shape[0] == n)
    if tensor is None:
        return None, None
    _check_fp8(tensor, config)
    key = (id(graph.tensors[w.name]), tensor._version, transposed, config.scheme, config.effective_group_size)
    hit = config.cache.get(key)
    if hit is None:
        hit = quantize(tensor, config.scheme, config.group_size)
        config.cache[key] = hit
    return hit


def _packed_experts(graph: Graph, w: Value, config: QuantConfig, want_q: tuple[int, ...]
                    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Codes ``[E, N, ...]`` and scales ``[E, N, ...]`` of expert weight ``w[E, N, K]``: the ``config.scheme``
    format of its E * N rows (``membound.ir.ops.quant``), from the store (a saved folder), the cache, or
    quantized now. ``want_q``: the codes' shape."""
    tensor = graph.tensors.get(w.name)
    saved = _from_store(graph, w.name, config)
    if saved is not None:
        q, sc = saved
        return _saved_on(w, tensor, q, sc, want_q, tuple(sc.shape[:2]) == tuple(q.shape[:2]))
    if tensor is None:
        return None, None
    _check_fp8(tensor, config)
    key = (id(tensor), tensor._version, "experts", config.scheme, config.effective_group_size)
    hit = config.cache.get(key)
    if hit is None:
        e, n, k = tensor.shape
        q, s = quantize(tensor.reshape(e * n, k), config.scheme, config.group_size)
        hit = (q.view(e, n, *q.shape[1:]), s.view(e, n, *s.shape[1:]))
        config.cache[key] = hit
    return hit


def _check_fp8(tensor: torch.Tensor, config: QuantConfig) -> None:
    if config.scheme == "fp8" and tensor.is_cuda and torch.cuda.get_device_capability(tensor.device) < (8, 9):
        name = torch.cuda.get_device_name(tensor.device)
        raise ValueError(f"quantize='fp8': {name} has no fp8 (it needs compute capability 8.9+, Ada or Hopper); "
                         f"use quantize='int8' for the same bytes")


def _saved_on(w: Value, tensor: Optional[torch.Tensor], q: torch.Tensor, s: torch.Tensor, want_q: tuple[int, ...],
              scales_fit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Saved packed tensors for parameter ``w``, checked against the shape the model needs and moved to its
    device (scales in its dtype)."""
    if tuple(q.shape) != want_q or not scales_fit:
        raise ValueError(f"quantize-weights: the saved packed weight for {w.name!r} has shape {tuple(q.shape)}, "
                         f"but the model's weight {tuple(w.shape)} needs {want_q}: the saved folder was made "
                         f"from another model or scheme; quantize again and save")
    device = tensor.device if tensor is not None else q.device
    return q.to(device), s.to(device=device, dtype=w.dtype)


def sourced_rows(graph: Graph, name: str, table: dict[str, Any]) -> Optional[list[Any]]:
    """``table``'s entries that make up parameter ``name``, top rows first: ``[table[name]]``, or for a weight
    merge-linear concatenated (``graph.meta["param_sources"]``) its sources' entries; None when missing."""
    if name in table:
        return [table[name]]
    sources = graph.meta.get("param_sources", {}).get(name)
    if sources and all(src in table for src, _ in sources):
        return [table[src] for src, _ in sources]
    return None


def _from_store(graph: Graph, name: str, config: QuantConfig) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Saved packed tensors for parameter ``name``: saved under that name, or (a weight merge-linear
    concatenated) the rows of its sources concatenated: every format quantizes rows independently."""
    parts = sourced_rows(graph, name, config.store) if config.store is not None else None
    if parts is None:
        return None
    if len(parts) == 1:
        return parts[0]
    return torch.cat([q for q, _ in parts]), torch.cat([s for _, s in parts])


def _declines(ctx: PassContext, node: Node, quant: Node) -> Optional[str]:
    if ctx.cost is None:
        return None
    dims = decode_dims(ctx, node.inputs)
    before, after = seconds(ctx, node, dims), seconds(ctx, quant, dims)
    if after >= before:
        return f"the cost model says {before:.3g}s in float and {after:.3g}s quantized"
    return None


def _quant_types(n: int, k: int, dtype: torch.dtype, config: QuantConfig,
                 rows: Optional[tuple[Any, ...]] = None) -> tuple[TensorType, TensorType]:
    """Types of the codes and scales of an ``[N, K]`` weight; ``rows`` replaces the leading N (experts:
    ``(E, N)``)."""
    from membound.ir.ops.quant import QWEIGHT_DTYPE

    lead = rows if rows is not None else (n,)
    if config.scheme == "int4":
        g = num_groups(k, config.group_size)
        return (TensorType(QWEIGHT_DTYPE["int4"], (*lead, (k + 1) // 2)), TensorType(dtype, (*lead, g, 2)))
    return TensorType(QWEIGHT_DTYPE[config.scheme], (*lead, k)), TensorType(dtype, lead)


@register_pass("quantize-weights")
class QuantizeWeights:
    """Replace linears over parameter weights by weight-only quantized ones (``quant_linear``,
    ``quant_gated_linear``) where the cost model says the fewer weight bytes pay."""

    name = "quantize-weights"
    Options = QuantConfig

    def __init__(self, config: Union[None, str, QuantConfig] = None, **options: Any) -> None:
        if isinstance(config, str):
            config = as_quant_config(config)
        self.config = pass_options(self.name, QuantConfig, config, options)
        self.__doc__ = type(self).__doc__

    def __call__(self, graph: Graph, ctx: PassContext) -> bool:
        config = self.config
        made: dict[int, tuple[Value, Value]] = {}
        changed = False
        counts = {"quantized": 0, "declined": 0, "moe": 0}
        for node in list(graph.nodes):
            if node.op in ("moe", "moe_experts"):
                why = self._quantize_moe(graph, node, ctx)
                if why is not None:
                    ctx.note(f"{node.op} %{node.results[0].name}: experts left in "
                             f"{dtype_name(node.inputs[0].dtype)}: {why}")
                counts["moe" if why is None else "declined"] += 1
                changed |= why is None
                continue
            if node.op in _FUSED_FORMS:
                ctx.note(f"%{node.results[0].name} ({node.op}) left in {dtype_name(node.results[0].dtype)}: "
                         f"quantize-weights has no form of {node.op}; run it before the pass that made it (the "
                         f"compile driver does: membound.compile(..., quantize=...))")
                counts["declined"] += 1
                continue
            w = _candidate(node, config)
            if w is None:
                continue
            if _routes(node):
                ctx.note(f"%{node.results[0].name} ({w.name}) left in {dtype_name(w.dtype)}: a router (its scores "
                         f"feed a top-k that picks the experts; quantized, they could pick others)")
                counts["declined"] += 1
                continue
            n, k = _nk(node, w)
            if n < 1 or k < 1:
                continue
            transposed = node.op == "matmul"
            pair = made.get((id(w), transposed))
            if pair is None:
                q_type, s_type = _quant_types(n, k, w.dtype, config)
                scratch = Graph("quant_cost")
                qv, sv = scratch.add_param("q", q_type), scratch.add_param("s", s_type)
                probe = scratch.create_node(*self._replacement(node, [scratch.add_input(f"i{i}", v.type) for i, v in
                                                                      enumerate(node.inputs)], qv, sv))
                reason = _declines(ctx, node, probe)
                if reason is not None:
                    ctx.note(f"%{node.results[0].name} ({w.name}) left in {dtype_name(w.dtype)}: {reason}")
                    counts["declined"] += 1
                    continue
                q, s = _packed(graph, w, transposed, config)
                base = f"{w.name}.t" if transposed else w.name
                pair = (graph.add_param(f"{base}.qweight", q_type, q), graph.add_param(f"{base}.scales", s_type, s))
                made[(id(w), transposed)] = pair
            op, inputs, attrs = self._replacement(node, list(node.inputs), *pair)
            new = graph.insert_before(node, graph.create_node(op, inputs, attrs))
            new.meta.update(node.meta)
            new.meta["quantized_from"] = w.name
            new.meta["quantized_transposed"] = transposed
            graph.replace_all_uses(node.results[0], new.results[0])
            graph.erase_node(node)
            counts["quantized"] += 1
            changed = True
        if changed:
            graph.remove_unused_params()
            ctx.note(f"{counts['quantized']} linears to {config.scheme}"
                     + (f" (group {config.group_size})" if config.scheme == "int4" else "")
                     + (f", the experts of {counts['moe']} moe ops" if counts["moe"] else "")
                     + (f", {counts['declined']} left in float" if counts["declined"] else ""))
        return changed

    def _quantize_moe(self, graph: Graph, node: Node, ctx: PassContext) -> Optional[str]:
        """Replace ``moe`` by ``quant_moe`` (``moe_experts`` by ``quant_moe_experts``) over quantized copies of its
        gate/up/down experts; why not, or None when done. The router, the shared expert and the biases stay in
        float (a few percent of a token's bytes)."""
        config = self.config
        head = 3 if node.op == "moe_experts" else 2  # the operands before the experts: x, router / weights, ids
        quant_op = "quant_moe_experts" if node.op == "moe_experts" else "quant_moe"
        x, weights = node.inputs[0], node.inputs[head:head + 3]
        if config.scheme not in QUANT_MOE_SCHEMES:
            return f"only {', '.join(QUANT_MOE_SCHEMES)} experts have a kernel, not {config.scheme}"
        if x.dtype == torch.float64:
            return "f64 activations"
        skipped = [w.name for w in weights if w.kind != "param" or config.skips(w.name)]
        if skipped:
            return f"{skipped[0]} is not a parameter or matches a skip pattern"
        types = [t for w in weights for t in _quant_types(int(w.shape[0]) * int(w.shape[1]), int(w.shape[2]),
                                                           x.dtype, config, tuple(w.shape[:2]))]
        scratch = Graph("quant_cost")
        ins = [scratch.add_input(f"i{i}", v.type) for i, v in enumerate(node.inputs)]
        packed_in = [scratch.add_param(f"p{i}", t) for i, t in enumerate(types)]
        attrs = dict(node.attrs, scheme=config.scheme, group_size=config.effective_group_size)
        probe = scratch.create_node(quant_op, ins[:head] + packed_in + ins[head + 3:], attrs)
        reason = _declines(ctx, node, probe)
        if reason is not None:
            return reason
        packed: list[Value] = []
        for w, (q_type, s_type) in zip(weights, zip(types[::2], types[1::2])):
            q, sc = _packed_experts(graph, w, config, tuple(int(d) for d in q_type.shape))
            packed += [graph.add_param(f"{w.name}.qweight", q_type, q), graph.add_param(f"{w.name}.scales", s_type, sc)]
        operands = [*node.inputs[:head], *packed, *node.inputs[head + 3:]]
        new = graph.insert_before(node, graph.create_node(quant_op, operands, attrs))
        new.meta.update(node.meta)
        new.meta["quantized_from"] = tuple(w.name for w in weights)
        graph.replace_all_uses(node.results[0], new.results[0])
        graph.erase_node(node)
        return None

    def _replacement(self, node: Node, inputs: Sequence[Value], q: Value, s: Value
                     ) -> tuple[str, list[Value], dict[str, Any]]:
        config = self.config
        attrs: dict[str, Any] = {"scheme": config.scheme, "group_size": config.effective_group_size,
                                 "in_features": _nk(node, node.inputs[_WEIGHT_INDEX[node.op]])[1]}
        if node.op in ("linear", "matmul"):
            return "quant_linear", [inputs[0], q, s] + list(inputs[2:]), attrs
        attrs["act"] = node.attrs.get("act", "silu")
        return "quant_gated_linear", [inputs[0], inputs[1], q, s], attrs


def packed_linears(graph: Graph) -> Iterator[tuple[Node, str, torch.Tensor, torch.Tensor]]:
    """``(node, float parameter name, qweight, scales)`` of every quantized linear of ``graph`` whose packed
    tensors are bound."""
    for node in graph.nodes:
        if node.op not in ("quant_linear", "quant_gated_linear"):
            continue
        qi = 1 if node.op == "quant_linear" else 2
        q, s = graph.tensors.get(node.inputs[qi].name), graph.tensors.get(node.inputs[qi + 1].name)
        if q is not None and s is not None:
            yield node, node.meta.get("quantized_from", node.inputs[qi].name), q, s


def packed_experts(graph: Graph) -> Iterator[tuple[Node, str, torch.Tensor, torch.Tensor]]:
    """``(node, float parameter name, codes [E, N, K], scales [E, N])`` of every expert weight (gate, up,
    down) of every ``quant_moe`` / ``quant_moe_experts`` of ``graph`` whose packed tensors are bound."""
    from membound.ir.ops.moe import packed_expert_operands

    for node in graph.nodes:
        if node.op not in QUANT_EXPERT_OPS:
            continue
        for qv, sv, _ in packed_expert_operands(node):
            q, s = graph.tensors.get(qv.name), graph.tensors.get(sv.name)
            if q is not None and s is not None:
                yield node, qv.name.removesuffix(".qweight"), q, s


def dequantized_experts(graph: Graph, node: Optional[Node] = None) -> dict[str, torch.Tensor]:
    """For every ``quant_moe`` / ``quant_moe_experts`` of ``graph`` (or just ``node``): the float ``[E, N, K]``
    expert weights its codes and scales stand for, in the scales' dtype, by the float parameter name the float op
    read (``<name>.qweight`` / ``<name>.scales``): what an eager model with dequantized experts would hold."""
    from membound.ir.ops.moe import dequantize_experts, packed_expert_operands

    out: dict[str, torch.Tensor] = {}
    for n in graph.nodes:
        if n.op not in QUANT_EXPERT_OPS or (node is not None and n is not node):
            continue
        for qv, sv, k in packed_expert_operands(n):
            q, s = graph.tensors.get(qv.name), graph.tensors.get(sv.name)
            if q is None or s is None:
                continue
            name = qv.name.removesuffix(".qweight")
            out[name] = dequantize_experts(q, s, s.dtype, n.attrs["scheme"], n.attrs["group_size"], int(k))
    return out


def dequantized_weights(graph: Graph) -> dict[str, torch.Tensor]:
    """For every quantized linear of ``graph``: the float weight its packed tensors stand for, by the
    original parameter name (what an eager model with dequantized weights would hold)."""
    out: dict[str, torch.Tensor] = {}
    for node, name, q, s in packed_linears(graph):
        a = node.attrs
        w = dequantize(q, s, a["scheme"], a["group_size"], a["in_features"])
        sources = graph.meta.get("param_sources", {}).get(name)
        if sources and not node.meta.get("quantized_transposed"):
            # a merge-linear weight: its rows are the original weights', in order
            rows = 0
            for src, n in sources:
                out[src] = w[rows:rows + n]
                rows += n
            continue
        out[name] = w.t() if node.meta.get("quantized_transposed") else w
    return out
