"""Mixture of experts: ``moe``, one op for a whole routed MLP block.

``moe(x, router, w_gate, w_up, w_down[, shared_gate, shared_up, shared_down, shared_router][, router_bias, b_gate,
b_up, b_down])``

- ``x[..., D]``: the tokens (``T`` = product of the leading dims);
- ``router[E, D]``: the router's linear (no bias); logits are formed in x's dtype and routed in fp32;
- ``w_gate[E, I, D]``, ``w_up[E, I, D]``, ``w_down[E, D, I]``: expert ``e`` computes
  ``w_down[e] @ (act(w_gate[e] @ h) * (w_up[e] @ h))``, in x's dtype;
- optional shared expert (Qwen2-MoE): ``shared_gate[Is, D]``, ``shared_up[Is, D]``,
  ``shared_down[D, Is]`` and its gate ``shared_router[1, D]``: every token adds
  ``sigmoid(shared_router @ h) * shared_mlp(h)``;
- ``bias=true`` (gpt-oss): the last four operands are biases, ``router_bias[E]`` on the router's logits and
  ``b_gate[E, I]``, ``b_up[E, I]``, ``b_down[E, D]`` on each expert's three products (each product rounded to x's
  dtype, then its bias added).

Activation (attr ``act``): ``"silu"``, ``silu(g') * u'``; ``"clamped_swiglu"`` (gpt-oss), with attr ``alpha``:
``g' * sigmoid(alpha * g') * (u' + 1)``. Both clamp by attr ``limit``: ``g' = min(g, limit)``,
``u' = clamp(u, -limit, limit)`` (``limit=none``: no clamp, ``g' = g``, ``u' = u``; HY-V4 clamps its silu experts so).
``alpha`` belongs to ``clamped_swiglu`` only.

Routing (attrs): ``top_k`` experts per token, chosen as ``torch.topk`` chooses (on exactly equal scores
whichever its algorithm keeps: not a rule); ``softmax_first=True`` takes the softmax over all E logits and
keeps the top k probabilities (Mixtral, Qwen2-MoE), ``False`` keeps the top k logits and takes their softmax;
``renormalize`` divides the kept weights by their sum. ``score="sigmoid"`` (Llama 4; with ``softmax_first=False``)
maps each kept logit through a sigmoid instead of the softmax over the k. ``weight_input=True`` (Llama 4) scales a
token by its routing weight (rounded to x's dtype, the product too) *before* the expert, whose output then joins
the sum unweighted; otherwise the weight scales the expert's output. Expert outputs are combined in fp32 and the
sum is rounded once to x's dtype.

Cost: a token reads only its experts' weights, so the bytes are the *active* weights: ``min(E, T *
top_k)`` experts' gate/up/down (a decode token of a top-2-of-8 model reads 2/8 of them), plus the
router, the shared expert, x and the result. FLOPs count the chosen experts only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import sympy
import torch
import torch.nn.functional as F

from membound.ir.ops import REQUIRED, define_op
from membound.ir.ops._common import fail, numel, require_float, require_same_dim, same_dtype
from membound.ir.ops.quant import INT4_GROUP_SIZES, QWEIGHT_DTYPE, dequantize, num_groups
from membound.ir.types import TensorType, dtype_name

ACTIVATIONS = ("silu", "clamped_swiglu")  # act: how an expert combines its gate and up products (gated_act)
SCORES = ("softmax", "sigmoid")  # how the kept logits become routing weights (``score``)
BIASES = ("router_bias", "b_gate", "b_up", "b_down")  # bias=true: the last four operands, in this order


def gated_act(g: torch.Tensor, u: torch.Tensor, act: str, alpha: float = 1.0, limit: Optional[float] = None
              ) -> torch.Tensor:
    """An expert's activation of its gate and up products ``g``, ``u`` (``act``, see the module), in their dtype
    (each operation rounded there, as the models compute it)."""
    if limit is not None:
        g, u = g.clamp(max=limit), u.clamp(min=-limit, max=limit)
    if act == "silu":
        return F.silu(g) * u
    return (u + 1) * (g * torch.sigmoid(g * alpha))


def moe_extras(op: str, rest: Sequence[Any], bias: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """``(shared, biases)``: the operands after the expert weights (types, tensors or IR values) split into the
    shared expert's four (or none) and, with ``bias=true``, the four biases (:data:`BIASES`; else none)."""
    rest = tuple(rest)
    if bias is True:
        if len(rest) < len(BIASES):
            fail(op, f"attribute bias=true needs {', '.join(BIASES)} as the last four operands; got {len(rest)} "
                     "operands after the expert weights")
        return rest[:-len(BIASES)], rest[-len(BIASES):]
    return rest, ()


def moe_operands(node: Any) -> tuple[list[Any], tuple[Any, ...], tuple[Any, ...]]:
    """A ``moe`` / ``quant_moe`` node's ``(x, router and expert weights [5 or 8 values], shared, biases)``."""
    head = 8 if node.op == "quant_moe" else 5
    shared, biases = moe_extras(node.op, node.inputs[head:], node.attrs.get("bias", False))
    return list(node.inputs[:head]), shared, biases


def route_topk(h: torch.Tensor, router: torch.Tensor, *, top_k: int, softmax_first: bool,
               router_bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk`` of the router's fp32 scores for tokens ``h[T, D]``: ``(values, experts)`` ``[T, k]``, the
    values the probabilities (``softmax_first``) or the logits (``F.linear(h, router, router_bias)`` in h's dtype).
    What :func:`route` and the decode kernels' one-launch tail (``moe_route.route_pairs``) start from; its
    tie-breaking is the model's."""
    logits = F.linear(h, router, router_bias).float()  # [T, E]
    return torch.topk(logits.softmax(dim=-1) if softmax_first else logits, top_k, dim=-1)


def route(h: torch.Tensor, router: torch.Tensor, *, top_k: int, softmax_first: bool,
          renormalize: bool, score: str = "softmax", router_bias: Optional[torch.Tensor] = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights f32[T, k], experts i64[T, k])`` of tokens ``h[T, D]``: the routing every form computes."""
    top, experts = route_topk(h, router, top_k=top_k, softmax_first=softmax_first, router_bias=router_bias)
    weights = top if softmax_first else top.sigmoid() if score == "sigmoid" else top.softmax(dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


def expert_mlp(h: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
               act: str, biases: Sequence[Optional[torch.Tensor]] = (None, None, None), alpha: float = 1.0,
               limit: Optional[float] = None) -> torch.Tensor:
    """``w_down @ act(w_gate @ h, w_up @ h)`` for rows ``h[M, D]``, in h's dtype; ``biases`` (gate, up, down rows,
    or None) each added to its product once the product is rounded to h's dtype."""
    def product(a: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        y = F.linear(a, w)
        return y if b is None else y + b

    g, u = product(h, w_gate, biases[0]), product(h, w_up, biases[1])
    return product(gated_act(g, u, act, alpha, limit), w_down, biases[2])


def shared_expert(h: torch.Tensor, shared: Sequence[torch.Tensor]) -> torch.Tensor:
    """Qwen2-MoE's shared expert (a silu MLP), gated per token: ``sigmoid(h @ g.T) * mlp(h)`` in fp32."""
    gate, up, down, router = shared
    return torch.sigmoid(F.linear(h, router)).float() * expert_mlp(h, gate, up, down, "silu").float()


# ---------------------------------------------------------------------------------------------
# type rule
# ---------------------------------------------------------------------------------------------


def _infer_moe(x: TensorType, router: TensorType, w_gate: TensorType, w_up: TensorType, w_down: TensorType,
               *rest: TensorType, top_k: Any, softmax_first: Any, renormalize: Any, act: Any, score: Any = "softmax",
               weight_input: Any = False, bias: Any = False, alpha: Any = 1.0, limit: Any = None) -> TensorType:
    require_float("moe", x, "x")
    if not isinstance(bias, bool):
        fail("moe", f"attribute bias must be a bool, got {bias!r}", TypeError)
    shared_types, bias_types = moe_extras("moe", rest, bias)
    if len(shared_types) not in (0, 4):
        fail("moe", f"the shared expert needs all of shared_gate/up/down/router, got {len(shared_types)} operands "
                    "where 4 or none belong")
    weights = [("router", router), ("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down)]
    given = list(zip(("shared_gate", "shared_up", "shared_down", "shared_router"), shared_types))
    dtype = same_dtype("moe", ("x", x), *weights, *given, *zip(BIASES, bias_types))
    if x.rank < 1 or router.rank != 2 or (w_gate.rank, w_up.rank, w_down.rank) != (3, 3, 3):
        fail("moe", f"needs x[..., D], router[E, D], w_gate/w_up[E, I, D], w_down[E, D, I]; got x {x}, "
                    f"router {router}, w_gate {w_gate}, w_up {w_up}, w_down {w_down}")
    e, d = router.shape
    i = w_gate.shape[1]
    require_same_dim("moe", x.shape[-1], d, f"x {x} and router {router} disagree on D")
    wants = [("w_gate", w_gate, (e, i, d)), ("w_up", w_up, (e, i, d)), ("w_down", w_down, (e, d, i))]
    if given:
        si = shared_types[0].shape[0]
        wants += [(name, t, want) for (name, t), want in zip(given, ((si, d), (si, d), (d, si), (1, d)))]
    wants += [(name, t, want) for (name, t), want in zip(zip(BIASES, bias_types), ((e,), (e, i), (e, i), (e, d)))]
    _require_shapes("moe", wants)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        fail("moe", f"attribute top_k must be a positive int, got {top_k!r}", TypeError)
    if isinstance(e, sympy.Integer) and top_k > int(e):
        fail("moe", f"attribute top_k={top_k} is more than the {e} experts")
    for attr, v in (("softmax_first", softmax_first), ("renormalize", renormalize)):
        if not isinstance(v, bool):
            fail("moe", f"attribute {attr} must be a bool, got {v!r}", TypeError)
    _check_act("moe", act, alpha, limit)
    if score not in SCORES:
        fail("moe", f"attribute score must be one of {SCORES}, got {score!r}")
    if score == "sigmoid" and softmax_first:
        fail("moe", "score='sigmoid' maps the kept top-k logits: it needs softmax_first=False")
    if not isinstance(weight_input, bool):
        fail("moe", f"attribute weight_input must be a bool, got {weight_input!r}", TypeError)
    return TensorType(dtype, x.shape)


# ---------------------------------------------------------------------------------------------
# reference: tokens grouped by expert (each expert's weights used once, on its rows)
# ---------------------------------------------------------------------------------------------


def _moe(x: torch.Tensor, router: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
         *rest: torch.Tensor, top_k: int, softmax_first: bool, renormalize: bool, act: str,
         score: str = "softmax", weight_input: bool = False, bias: bool = False, alpha: float = 1.0,
         limit: Optional[float] = None) -> torch.Tensor:
    shared, biases = moe_extras("moe", rest, bias)
    router_bias, b_gate, b_up, b_down = biases or (None, None, None, None)
    h = x.reshape(-1, x.shape[-1])  # [T, D]
    weights, experts = route(h, router, top_k=top_k, softmax_first=softmax_first, renormalize=renormalize,
                             score=score, router_bias=router_bias)
    out = combine_experts(h, weights, experts, w_gate, w_up, w_down, act, (b_gate, b_up, b_down), alpha, limit,
                          weight_input)
    if shared:
        out += shared_expert(h, shared)
    return out.to(x.dtype).reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# costs
# ---------------------------------------------------------------------------------------------


def _tokens(ins: Sequence[TensorType]) -> sympy.Expr:
    return numel(ins[0].shape[:-1])


def _moe_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """Router ``2*T*E*D``, each token's k experts ``6*I*D + 5*I`` (three products, act * up) and the
    combine; the shared expert on every token."""
    t = _tokens(ins)
    e, d = ins[1].shape
    i = ins[2].shape[1]
    k = attrs["top_k"]
    flops = 2 * t * e * d + t * k * (6 * i * d + 5 * i + 2 * d)
    shared, biases = moe_extras("moe", ins[5:], attrs.get("bias", False))
    if shared:
        si = shared[0].shape[0]
        flops += t * (6 * si * d + 5 * si + 2 * d + 4 * d)
    if biases:  # the router's and each chosen expert's three bias adds; the clamps and sigmoid are in the 5 * I
        flops += t * e + t * k * (2 * i + d)
    return flops


def active_experts(tokens: sympy.Expr, experts: sympy.Expr, top_k: int) -> sympy.Expr:
    """How many experts a step of ``tokens`` tokens reads at most: ``min(E, tokens * k)``."""
    return sympy.Min(experts, tokens * top_k)


# the routed-experts ops (one decode step reads top_k of E each)
MOE_OPS = ("moe", "quant_moe", "moe_experts", "quant_moe_experts")


def expert_bytes(node: Any) -> tuple[int, int]:
    """(E, bytes of one expert's gate/up/down weights and biases) of a ``moe``, ``quant_moe`` or ``moe_experts``
    node (static shapes)."""
    if node.op in ("moe_experts", "quant_moe_experts"):
        weights = node.inputs[3:]  # gate, up, down (codes and scales) and their biases
        experts = int(node.inputs[3].type.shape[0])
    else:
        weights = node.inputs[2:8] if node.op == "quant_moe" else node.inputs[2:5]
        weights = [*weights, *moe_operands(node)[2][1:]]  # the experts' biases (not the router's)
        experts = int(node.inputs[1].type.shape[0])
    return experts, int(sum(v.type.nbytes() for v in weights)) // experts


def expert_top_k(node: Any) -> int:
    """Experts a token reads in a node of :data:`MOE_OPS`: ``top_k``, or the given routing's k."""
    return int(node.inputs[2].type.shape[1]) if "experts" in node.op else int(node.attrs["top_k"])


def _moe_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """x, the result, the router (and its bias), the shared expert, and the gate/up/down (and their biases) of the
    active experts only."""
    x, router, w_gate, w_up, w_down = ins[:5]
    shared, biases = moe_extras("moe", ins[5:], attrs.get("bias", False))
    per_expert = (w_gate.nbytes() + w_up.nbytes() + w_down.nbytes() + sum(b.nbytes() for b in biases[1:]))
    per_expert = per_expert / router.shape[0]
    total = x.nbytes() + outs[0].nbytes() + router.nbytes() + sum(b.nbytes() for b in biases[:1])
    total += active_experts(_tokens(ins), router.shape[0], attrs["top_k"]) * per_expert
    for t in shared:
        total += t.nbytes()
    return total


define_op("moe", inputs=("x", "router", "w_gate", "w_up", "w_down", "shared_gate?", "shared_up?", "shared_down?",
                         "shared_router?", "router_bias?", "b_gate?", "b_up?", "b_down?"),
          attrs={"top_k": REQUIRED, "softmax_first": True, "renormalize": True, "act": "silu", "score": "softmax",
                 "weight_input": False, "bias": False, "alpha": 1.0, "limit": None}, kind="moe",
          infer=_infer_moe, reference=_moe, flops=_moe_flops, bytes=_moe_bytes, host_sync=True,
          doc="routed mixture of gated-MLP experts (top_k of E per token, fp32 combine), optional gated shared "
              "expert, optional router and expert biases (bias=true), silu or clamped SwiGLU experts; bytes count the "
              "active experts only")


# ---------------------------------------------------------------------------------------------
# moe_experts: the experts of a block whose routing the graph computes (DeepSeek-V2/V3's group-limited routing,
# the score-correction bias, a scaling factor: routers moe does not name)
# ---------------------------------------------------------------------------------------------
# moe_experts(x[T, D], weights[T, k], ids[T, k], w_gate, w_up, w_down[, b_gate, b_up, b_down]) {act, alpha, limit,
# bias}: out[t] = sum_j weights[t, j] * expert_{ids[t, j]}(x[t]), the experts as moe's (same act, biases after
# each product), combined in fp32 (the weights taken in fp32) and rounded once to x's dtype. The routing is the
# graph's own (its ops run before); ids must be in [0, E) and a token's k ids distinct.

EXPERT_BIASES = ("b_gate", "b_up", "b_down")


def combine_experts(h: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, w_gate: torch.Tensor,
                    w_up: torch.Tensor, w_down: torch.Tensor, act: str, biases: Sequence[Optional[torch.Tensor]],
                    alpha: float, limit: Optional[float], weight_input: bool = False) -> torch.Tensor:
    """``sum_j weights[t, j] * expert_{experts[t, j]}(h[t])`` in fp32 ``[T, D]``: tokens grouped by expert (each
    expert's weights used once, on its rows). ``weight_input``: the token scaled by its weight (rounded to h's dtype,
    the product too) before the expert, whose output joins the sum unweighted."""
    out = torch.zeros(h.shape, dtype=torch.float32, device=h.device)  # [T, D]
    for e in range(w_gate.shape[0]):
        rows, slot = (experts == e).nonzero(as_tuple=True)  # the tokens that chose e, and in which slot
        if rows.numel() == 0:
            continue
        w = weights[rows, slot, None].float()
        own = [b[e] if b is not None else None for b in biases]
        if weight_input:  # (Llama 4's routed_in)
            y = expert_mlp(h[rows] * w.to(h.dtype), w_gate[e], w_up[e], w_down[e], act, own, alpha, limit)
            out.index_add_(0, rows, y.float())
            continue
        y = expert_mlp(h[rows], w_gate[e], w_up[e], w_down[e], act, own, alpha, limit)  # [M, D]
        out.index_add_(0, rows, y.float() * w)
    return out


def _infer_moe_experts(x: TensorType, weights: TensorType, ids: TensorType, w_gate: TensorType, w_up: TensorType,
                       w_down: TensorType, *biases: TensorType, act: Any, alpha: Any = 1.0, limit: Any = None,
                       bias: Any = False) -> TensorType:
    op = "moe_experts"
    require_float(op, x, "x")
    require_float(op, weights, "weights")
    if ids.dtype not in (torch.int64, torch.int32):
        fail(op, f"ids must be i64/i32 expert indices, got {ids}", TypeError)
    if not isinstance(bias, bool):
        fail(op, f"attribute bias must be a bool, got {bias!r}", TypeError)
    if len(biases) != (3 if bias else 0):
        fail(op, f"bias={bias} takes {3 if bias else 0} bias operands ({', '.join(EXPERT_BIASES)}), got {len(biases)}")
    if x.rank != 2 or weights.rank != 2 or ids.rank != 2 or (w_gate.rank, w_up.rank, w_down.rank) != (3, 3, 3):
        fail(op, f"needs x[T, D], weights[T, k], ids[T, k], w_gate/w_up[E, I, D], w_down[E, D, I]; got x {x}, "
                 f"weights {weights}, ids {ids}, w_gate {w_gate}, w_up {w_up}, w_down {w_down}")
    same_dtype(op, ("x", x), ("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down), *zip(EXPERT_BIASES, biases))
    t, d = x.shape
    e, i = w_gate.shape[:2]
    for a, b in zip(weights.shape, ids.shape):
        require_same_dim(op, a, b, f"weights {weights} and ids {ids} must both be [T, k]")
    wants = [("weights", weights, (t, ids.shape[1])), ("w_gate", w_gate, (e, i, d)), ("w_up", w_up, (e, i, d)),
             ("w_down", w_down, (e, d, i))]
    wants += [(n, b, want) for n, b, want in zip(EXPERT_BIASES, biases, ((e, i), (e, i), (e, d)))]
    _require_shapes(op, wants)
    if isinstance(ids.shape[1], sympy.Integer) and isinstance(e, sympy.Integer) and int(ids.shape[1]) > int(e):
        fail(op, f"{ids.shape[1]} experts a token is more than the {e} experts")
    _check_act(op, act, alpha, limit)
    return TensorType(x.dtype, x.shape)


def _require_shapes(op: str, wants: Sequence[tuple[str, TensorType, tuple[Any, ...]]]) -> None:
    """Each ``(name, type, shape)``: the operand has that rank and those dims (symbolic ones where provable)."""
    for name, t, want in wants:
        if t.rank != len(want):
            fail(op, f"{name} must be [{', '.join(map(str, want))}], got {t}")
        for have, need in zip(t.shape, want):
            require_same_dim(op, have, need, f"{name} {t} must be [{', '.join(map(str, want))}]")


def _check_act(op: str, act: Any, alpha: Any, limit: Any) -> None:
    if act not in ACTIVATIONS:
        fail(op, f"attribute act must be one of {list(ACTIVATIONS)}, got {act!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        fail(op, f"attribute alpha must be a number, got {alpha!r}", TypeError)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0):
        fail(op, f"attribute limit must be none or a positive number, got {limit!r}", TypeError)
    if act != "clamped_swiglu" and alpha != 1.0:
        fail(op, f"attribute alpha belongs to act='clamped_swiglu'; act={act!r} does not take it (got alpha={alpha!r})")


def _moe_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                 w_down: torch.Tensor, *biases: torch.Tensor, act: str, alpha: float = 1.0,
                 limit: Optional[float] = None, bias: bool = False) -> torch.Tensor:
    out = combine_experts(x, weights, ids.long(), w_gate, w_up, w_down, act, biases or (None, None, None), alpha,
                          limit)
    return out.to(x.dtype)


def _moe_experts_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """Each token's k experts ``6*I*D + 5*I`` and the weighted combine; the biases' adds."""
    x, weights, _, w_gate = ins[:4]
    t, k = x.shape[0], weights.shape[1]
    i, d = w_gate.shape[1], x.shape[1]
    return t * k * (6 * i * d + 5 * i + 2 * d + (2 * i + d if attrs.get("bias") else 0))


def _moe_experts_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """x, the weights and ids, the result, and the gate/up/down (and their biases) of the active experts only."""
    x, weights, ids = ins[:3]
    e = ins[3].shape[0]
    per_expert = sum(w.nbytes() for w in ins[3:]) / e
    return (x.nbytes() + weights.nbytes() + ids.nbytes() + outs[0].nbytes()
            + active_experts(x.shape[0], e, weights.shape[1]) * per_expert)


define_op("moe_experts", inputs=("x", "weights", "ids", "w_gate", "w_up", "w_down", "b_gate?", "b_up?", "b_down?"),
          attrs={"act": "silu", "alpha": 1.0, "limit": None, "bias": False}, kind="moe", infer=_infer_moe_experts,
          reference=_moe_experts, flops=_moe_experts_flops, bytes=_moe_experts_bytes, host_sync=True,
          doc="the experts of a routed block whose routing (weights, ids) the graph computes: each token's k experts, "
              "weighted, combined in fp32; bytes count the active experts only")


# ---------------------------------------------------------------------------------------------
# quant_moe: the same block over weight-only quantized experts (int8, int4, fp8)
# ---------------------------------------------------------------------------------------------
# quant_moe(x, router, q_gate, s_gate, q_up, s_up, q_down, s_down[, shared_gate, shared_up, shared_down,
# shared_router][, router_bias, b_gate, b_up, b_down]) {scheme, group_size}: each expert weight [E, N, K] is stored
# in one of membound.ir.ops.quant's formats applied to its E * N rows, with a leading E on codes and scales:
# - int8: i8 codes [E, N, K], per-output-channel scales [E, N];
# - int4: u8 codes [E, N, ceil(K / 2)] (two per byte, even k in the low nibble), (scale, offset) pairs
#   [E, N, ceil(K / group_size), 2];
# - fp8: e4m3 codes [E, N, K], per-output-channel scales [E, N].
# Scales are in x's dtype. K is D for gate/up and I for down (from the router and the gate codes), so
# int4's odd K needs no attribute. Everything else is ``moe``'s; the router, shared expert and biases stay float.

QUANT_MOE_SCHEMES = ("int8", "int4", "fp8")


def dequantize_experts(q: torch.Tensor, s: torch.Tensor, dtype: torch.dtype, scheme: str = "int8",
                       group_size: int = 0, in_features: Optional[int] = None) -> torch.Tensor:
    """``[E, N, K]`` float expert weights from their codes and scales (any scheme of ``quant_moe``),
    computed in fp32 and rounded once to ``dtype``: ``membound.ir.ops.quant.dequantize`` of the E * N rows.

    ``in_features``: K (needed for int4, whose codes hold ceil(K / 2) bytes a row; default: even K)."""
    e, n = q.shape[:2]
    k = in_features if in_features is not None else q.shape[2] * (2 if scheme == "int4" else 1)
    w = dequantize(q.reshape(e * n, q.shape[2]), s.reshape(e * n, *s.shape[2:]), scheme, group_size, k, dtype)
    return w.view(e, n, k)


def expert_in_features(router: Any, q_gate: Any) -> tuple[Any, Any, Any]:
    """K of gate, up and down of a ``quant_moe``: D (the router's columns), D, I (the gate codes' rows)."""
    d, i = router.shape[1], q_gate.shape[1]
    return d, d, i


def _infer_quant_moe(x: TensorType, router: TensorType, q_gate: TensorType, s_gate: TensorType, q_up: TensorType,
                     s_up: TensorType, q_down: TensorType, s_down: TensorType, *shared: Optional[TensorType],
                     top_k: Any, softmax_first: Any, renormalize: Any, act: Any, scheme: Any,
                     group_size: Any, score: Any = "softmax", weight_input: Any = False, bias: Any = False,
                     alpha: Any = 1.0, limit: Any = None) -> TensorType:
    if scheme not in QUANT_MOE_SCHEMES:
        fail("quant_moe", f"attribute scheme must be one of {QUANT_MOE_SCHEMES}, got {scheme!r}")
    if scheme == "int4" and group_size not in INT4_GROUP_SIZES:
        fail("quant_moe", f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size!r}", TypeError)
    floats = []
    for (name, q, sc), k in zip((("gate", q_gate, s_gate), ("up", q_up, s_up), ("down", q_down, s_down)),
                                expert_in_features(router, q_gate)):
        if q.dtype != QWEIGHT_DTYPE[scheme] or q.rank != 3:
            fail("quant_moe", f"{scheme} q_{name} must be {dtype_name(QWEIGHT_DTYPE[scheme])}[E, N, K], got {q}",
                 TypeError)
        rank = 4 if scheme == "int4" else 2
        if sc.dtype != x.dtype or sc.rank != rank:
            want = "[E, N, groups, 2]" if scheme == "int4" else "[E, N]"
            fail("quant_moe", f"{scheme} s_{name} must be {want} in x's dtype {x.dtype}, got {sc}", TypeError)
        for have, need in zip(sc.shape, q.shape[:2]):
            require_same_dim("quant_moe", have, need, f"s_{name} {sc} must start with [E, N] of q_{name} {q}")
        if scheme == "int4":
            require_same_dim("quant_moe", q.shape[2], (k + 1) // 2, f"int4 q_{name} {q} for K={k}: bytes a row")
            require_same_dim("quant_moe", sc.shape[2], num_groups(k, group_size),
                             f"int4 s_{name} {sc} for K={k}, group_size={group_size}: groups")
            require_same_dim("quant_moe", sc.shape[3], 2, f"int4 s_{name} {sc} must end in (scale, offset) pairs")
        floats.append(TensorType(x.dtype, (q.shape[0], q.shape[1], k)))
    try:
        return _infer_moe(x, router, *floats, *shared, top_k=top_k, softmax_first=softmax_first,
                          renormalize=renormalize, act=act, score=score, weight_input=weight_input, bias=bias,
                          alpha=alpha, limit=limit)
    except (TypeError, ValueError) as e:
        raise type(e)(f"quant_moe: {str(e).removeprefix('moe: ')}") from None


def _quant_moe(x: torch.Tensor, router: torch.Tensor, q_gate: torch.Tensor, s_gate: torch.Tensor,
               q_up: torch.Tensor, s_up: torch.Tensor, q_down: torch.Tensor, s_down: torch.Tensor,
               *shared: torch.Tensor, top_k: int, softmax_first: bool, renormalize: bool, act: str,
               scheme: str, group_size: int = 0, score: str = "softmax", weight_input: bool = False,
               bias: bool = False, alpha: float = 1.0, limit: Optional[float] = None) -> torch.Tensor:
    """Dequantize the experts to x's dtype (O(weights), once per call), then ``moe``'s reference."""
    ks = expert_in_features(router, q_gate)
    ws = [dequantize_experts(q, sc, x.dtype, scheme, group_size, k)
          for (q, sc), k in zip(((q_gate, s_gate), (q_up, s_up), (q_down, s_down)), ks)]
    return _moe(x, router, *ws, *shared, top_k=top_k, softmax_first=softmax_first, renormalize=renormalize,
                act=act, score=score, weight_input=weight_input, bias=bias, alpha=alpha, limit=limit)


def _as_float(ins: Sequence[TensorType]) -> list[TensorType]:
    """quant_moe's operand types as moe's would be, with the expert weights in their packed bytes' place."""
    x, router, q_gate = ins[:3]
    ks = expert_in_features(router, q_gate)
    return [x, router, *(TensorType(x.dtype, (q.shape[0], q.shape[1], k)) for q, k in zip(ins[2:8:2], ks)), *ins[8:]]


def _quant_moe_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """moe's FLOPs plus 2 per active expert weight element to dequantize it."""
    e = ins[1].shape[0]
    per_expert = sum(numel(w.shape) for w in _as_float(ins)[2:5]) / e
    return _moe_flops(_as_float(ins), outs, attrs) + 2 * active_experts(_tokens(ins), e, attrs["top_k"]) * per_expert


def _quant_moe_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """x, the result, the router (and its bias), the shared expert, and the codes, scales and biases of the active
    experts."""
    x, router = ins[:2]
    shared, biases = moe_extras("quant_moe", ins[8:], attrs.get("bias", False))
    per_expert = (sum(t.nbytes() for t in ins[2:8]) + sum(b.nbytes() for b in biases[1:])) / router.shape[0]
    total = x.nbytes() + outs[0].nbytes() + router.nbytes() + sum(b.nbytes() for b in biases[:1])
    total += active_experts(_tokens(ins), router.shape[0], attrs["top_k"]) * per_expert
    for t in shared:
        total += t.nbytes()
    return total


define_op("quant_moe", inputs=("x", "router", "q_gate", "s_gate", "q_up", "s_up", "q_down", "s_down", "shared_gate?",
                               "shared_up?", "shared_down?", "shared_router?", "router_bias?", "b_gate?", "b_up?",
                               "b_down?"),
          attrs={"top_k": REQUIRED, "softmax_first": True, "renormalize": True, "act": "silu", "scheme": "int8",
                 "group_size": 0, "score": "softmax", "weight_input": False, "bias": False, "alpha": 1.0,
                 "limit": None},
          kind="moe", infer=_infer_quant_moe, reference=_quant_moe, flops=_quant_moe_flops, bytes=_quant_moe_bytes,
          host_sync=True, doc="moe over int8 / int4 / fp8 expert weights; bytes count the active experts' codes and "
                              "scales only")

# ---------------------------------------------------------------------------------------------
# quant_moe_experts: moe_experts over quantized experts
# ---------------------------------------------------------------------------------------------
# quant_moe_experts(x, weights, ids, q_gate, s_gate, q_up, s_up, q_down, s_down[, b_gate, b_up, b_down])
# {act, alpha, limit, bias, scheme, group_size}: the experts stored as quant_moe's (K = D for gate/up from x, I for
# down from the gate codes' rows); the routing, combine and biases as moe_experts'.


def _experts_float_types(x: TensorType, q_gate: TensorType, q_up: TensorType, q_down: TensorType
                         ) -> list[TensorType]:
    d, i = x.shape[-1], q_gate.shape[1]
    return [TensorType(x.dtype, (q.shape[0], q.shape[1], k)) for q, k in ((q_gate, d), (q_up, d), (q_down, i))]


def _infer_quant_moe_experts(x: TensorType, weights: TensorType, ids: TensorType, q_gate: TensorType,
                             s_gate: TensorType, q_up: TensorType, s_up: TensorType, q_down: TensorType,
                             s_down: TensorType, *biases: TensorType, act: Any, alpha: Any = 1.0, limit: Any = None,
                             bias: Any = False, scheme: Any = "int8", group_size: Any = 0) -> TensorType:
    op = "quant_moe_experts"
    require_float(op, x, "x")
    # the codes and scales as quant_moe checks them, with x's D for the router's
    router = TensorType(x.dtype, (q_gate.shape[0], x.shape[-1]))
    try:
        _infer_quant_moe(x, router, q_gate, s_gate, q_up, s_up, q_down, s_down, top_k=1, softmax_first=True,
                         renormalize=False, act=act, scheme=scheme, group_size=group_size, alpha=alpha, limit=limit)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{op}: {str(e).removeprefix('quant_moe: ')}") from None
    try:
        return _infer_moe_experts(x, weights, ids, *_experts_float_types(x, q_gate, q_up, q_down), *biases, act=act,
                                  alpha=alpha, limit=limit, bias=bias)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{op}: {str(e).removeprefix('moe_experts: ')}") from None


def _quant_moe_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, q_gate: torch.Tensor,
                       s_gate: torch.Tensor, q_up: torch.Tensor, s_up: torch.Tensor, q_down: torch.Tensor,
                       s_down: torch.Tensor, *biases: torch.Tensor, act: str, alpha: float = 1.0,
                       limit: Optional[float] = None, bias: bool = False, scheme: str = "int8",
                       group_size: int = 0) -> torch.Tensor:
    """Dequantize the experts to x's dtype (O(weights), once per call), then ``moe_experts``' reference."""
    d, i = x.shape[-1], q_gate.shape[1]
    ws = [dequantize_experts(q, sc, x.dtype, scheme, group_size, k)
          for (q, sc), k in zip(((q_gate, s_gate), (q_up, s_up), (q_down, s_down)), (d, d, i))]
    return _moe_experts(x, weights, ids, *ws, *biases, act=act, alpha=alpha, limit=limit, bias=bias)


def _quant_experts_float(ins: Sequence[TensorType]) -> list[TensorType]:
    """quant_moe_experts' operand types as moe_experts' would be."""
    return [*ins[:3], *_experts_float_types(ins[0], ins[3], ins[5], ins[7]), *ins[9:]]


def _quant_moe_experts_flops(ins: Sequence[TensorType], outs: Sequence[TensorType],
                             attrs: dict[str, Any]) -> sympy.Expr:
    """moe_experts' FLOPs plus 2 per active expert weight element to dequantize it."""
    floats = _quant_experts_float(ins)
    e = ins[3].shape[0]
    per_expert = sum(numel(w.shape) for w in floats[3:6]) / e
    return (_moe_experts_flops(floats, outs, attrs)
            + 2 * active_experts(ins[0].shape[0], e, ins[1].shape[1]) * per_expert)


def _quant_moe_experts_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType],
                             attrs: dict[str, Any]) -> sympy.Expr:
    """x, the weights and ids, the result, and the codes, scales and biases of the active experts."""
    x, weights, ids = ins[:3]
    e = ins[3].shape[0]
    per_expert = sum(t.nbytes() for t in ins[3:]) / e
    return (x.nbytes() + weights.nbytes() + ids.nbytes() + outs[0].nbytes()
            + active_experts(x.shape[0], e, weights.shape[1]) * per_expert)


define_op("quant_moe_experts", inputs=("x", "weights", "ids", "q_gate", "s_gate", "q_up", "s_up", "q_down", "s_down",
                                       "b_gate?", "b_up?", "b_down?"),
          attrs={"act": "silu", "alpha": 1.0, "limit": None, "bias": False, "scheme": "int8", "group_size": 0},
          kind="moe", infer=_infer_quant_moe_experts, reference=_quant_moe_experts, flops=_quant_moe_experts_flops,
          bytes=_quant_moe_experts_bytes, host_sync=True,
          doc="moe_experts over int8 / int4 / fp8 expert weights; bytes count the active experts' codes and scales")


def packed_expert_operands(node: Any) -> list[tuple[Any, Any, Any]]:
    """``(codes, scales, K)`` of the gate, up and down experts of a ``quant_moe`` or ``quant_moe_experts`` node
    (IR values; K its float weight's last dim)."""
    if node.op == "quant_moe_experts":
        q_start, d = 3, node.inputs[0].shape[-1]
    else:
        q_start, d = 2, node.inputs[1].shape[1]
    codes = node.inputs[q_start:q_start + 6]
    i = codes[0].shape[1]
    return [(codes[j], codes[j + 1], k) for j, k in zip((0, 2, 4), (d, d, i))]


__all__ = ["ACTIVATIONS", "BIASES", "EXPERT_BIASES", "MOE_OPS", "QUANT_MOE_SCHEMES", "active_experts",
           "combine_experts", "dequantize_experts", "expert_bytes", "expert_in_features", "expert_mlp", "expert_top_k",
           "gated_act", "moe_extras", "moe_operands", "packed_expert_operands", "route", "shared_expert"]
