"""What a Triton executable launches, as the cost model's per-launch work list (``cost/step.py``).

Each step of a partition becomes one :class:`~membound.cost.step.KernelWork` (views launch nothing):

- a generated kernel (pointwise, row, sections) -> ``fused``, its bytes the partition's boundary bytes;
- ``linear`` / ``gated_linear`` -> the path the library takes at that many rows (``kernels/linear.py``):
  ``gemv`` (register FMA, M <= 2), ``gemv_dot`` (tensor cores, M <= ``SMALL_M``), ``cublas`` above;
  ``_gated`` for the gated form on our kernel (``linear_glu``, the gating in the epilogue, takes the plain
  kinds: its loop is the linear's over the merged weight); the fused forms (``rms_norm_linear``, ``linear_add``,
  ``gated_linear_add`` and their ``_sumsq`` forms) run the same kernel and take the same kinds; what a
  norm adds (each program re-reads its rows of x, or of the producer's partial sums of squares, from L2)
  is in the op's bytes (``ir/ops/matmul.py``); ``benches/profile_step.py`` on a GPU measures them;
- ``quant_linear`` / ``quant_gated_linear`` -> the path ``kernels/quant_matmul.py`` takes for the scheme at
  that many rows (``quant_kind``): ``quant_gemv_<scheme>`` (register FMA), ``quant_dot_<scheme>`` (tensor
  cores, M padded to 16 / 32: int8 and fp8 at every decode M), ``quant_pairs_int4`` (tensor cores over the
  int4 pairs dequantization: int4 with 16-bit x at every decode M), ``_gated`` for the gated op; above
  ``quant_matmul.SMALL_M`` rows (prefill) the path ``quant_matmul.prefill_path`` picks on the card's spec:
  ``quant_mma_<scheme>`` (the fused kernel) or ``quant_dequant_<scheme>`` (dequantize the packed weight,
  then ``cublas`` on the temporary: two work items, see ``dequant_works``);
- ``cached_attention`` -> ``decode_attention`` for one query per row, else ``attention``; ``attention``
  -> ``attention``; ``moe`` / ``quant_moe`` -> their launches (``moe_works``: routing, ``moe_decode`` or
  ``moe_grouped`` expert kernels, combine); other library kernels -> ``library``; ops run by their torch
  reference -> ``torch``.

One launch per library call: the split kernels (split-K linear, flash decoding) reduce in their last
program, not in a second kernel (a quantized matmul run as dequantize + cuBLAS is two items: its
dequantization and the matmul).

    works = kernel_works(executable.partition, {"B": 1, "T": 192})
    pred = predict_step(works, hardware, mode="graph+pdl")
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import sympy
import torch

from membound.backends.triton.partition import Partition
from membound.cost import Hardware, RooflineCost
from membound.cost.roofline import bindings, evaluate
from membound.cost.step import KernelWork
from membound.ir.graph import Node
from membound.ir.ops.moe import MOE_OPS

# our GEMV library's ops; the fused forms (a norm prologue, a residual epilogue) run the same kernel
LINEAR_OPS = ("linear", "gated_linear", "rms_norm_linear", "linear_add", "gated_linear_add",
              "rms_norm_linear_sumsq", "linear_add_sumsq", "gated_linear_add_sumsq", "linear_glu",
              "linear_rope", "rms_norm_linear_rope_sumsq", "rms_norm_linear_glu_sumsq")
_GATED = ("gated_linear", "gated_linear_add", "gated_linear_add_sumsq")
QUANT_OPS = ("quant_linear", "quant_gated_linear")

Dims = Mapping[Union[str, sympy.Symbol], int]


def linear_kind(op: str, m: int, n: int = 1, k: int = 1) -> str:
    """The kernel kind the library runs ``op`` (a bf16 GEMV op) with at ``m`` rows of ``[n, k]`` weight on a GPU
    (``kernels/linear.py``'s path choice)."""
    from membound.backends.triton.kernels.linear import PAIRED_OPS, SMALL_M, launch_config, prefers_cublas

    if op in QUANT_OPS:
        raise ValueError(f"linear_kind: {op} takes its kind from its scheme and shape: use quant_kind")
    if m > SMALL_M:
        return "cublas"
    if op == "linear" and prefers_cublas(m, n, k):
        return "cublas_gemv"
    # the path depends on m and the weight's size (the device enters only the split count, which the prior
    # covers); the paired ops' tiles as the library picks them (linear_glu's weight has 2N rows for its N columns)
    paired = PAIRED_OPS.get(op)
    cfg = launch_config(max(m, 1), n, k, torch.bfloat16, torch.device("cpu"), glu=paired == "glu",
                        rope=paired == "rope")
    if cfg.resident:
        return "gemv_row" if cfg.row else "gemv_resident"
    if cfg.row and op not in _GATED:
        return "gemv_row_loop"
    if cfg.swap and op not in _GATED:
        return "gemv_swap"
    kind = "gemv_dot" if cfg.use_dot else "gemv"
    return kind + ("_gated" if op in _GATED else "")


def quant_kind(op: str, m: int, n: int, k: int, scheme: str, group_size: int = 0,
               dtype: torch.dtype = torch.bfloat16, hardware: Optional[Hardware] = None) -> str:
    """The kernel kind ``quant_matmul`` runs ``op`` with at ``m`` rows of ``dtype`` x against an ``[n, k]``
    weight packed as ``scheme``: its ``pick_config`` decides (the device enters only the split count, which
    the prior covers); above ``SMALL_M`` rows its ``prefill_path`` rule on ``hardware``'s spec (default
    the H200's)."""
    from membound.backends.triton.kernels import quant_matmul as qm

    if m > qm.SMALL_M:
        times = qm.prefill_times(m, n, k, scheme, group_size, dtype, torch.device("cpu"),
                                 hardware or Hardware.named("h200"))
        return f"quant_mma_{scheme}" if times["kernel"] <= times["cublas"] else f"quant_dequant_{scheme}"
    cfg = qm.pick_config(max(m, 1), n, k, scheme, group_size, dtype, torch.device("cpu"))
    path = "pairs" if cfg.pairs else "dot" if cfg.use_dot else "gemv"
    return f"quant_{path}_{scheme}" + ("_gated" if op == "quant_gated_linear" else "")


def call_kind(node: Node, impl: str, dims: Dims, hardware: Optional[Hardware] = None) -> str:
    """The kernel kind of a node run as a call (``impl``: "library" or "torch") on ``hardware``."""
    if impl == "torch":
        return "torch"
    if node.op in LINEAR_OPS + QUANT_OPS:
        x = node.inputs[0].type
        k = x.shape[-1]
        m = int(evaluate(x.numel() / k, bindings(dims), f"{node.op} rows"))
        if node.op in QUANT_OPS:
            n = int(evaluate(node.results[0].type.shape[-1], bindings(dims), f"{node.op} columns"))
            return quant_kind(node.op, m, n, int(evaluate(k, bindings(dims), f"{node.op} K")),
                              node.attrs["scheme"], node.attrs.get("group_size", 0), x.dtype, hardware)
        n = int(evaluate(node.results[0].type.shape[-1], bindings(dims), f"{node.op} columns"))
        return linear_kind(node.op, m, n, int(evaluate(k, bindings(dims), f"{node.op} K")))
    if node.op == "cached_attention":
        rows = node.inputs[0].type.shape[2]  # q [B, Hq, S, D]: S new tokens per row
        one = evaluate(rows, bindings(dims), "cached_attention queries") == 1
        return "decode_attention" if one else "attention"
    if node.op == "attention":
        return "attention"
    return "library"


def kernel_works(partition: Partition, dims: Dims, hardware: Optional[Hardware] = None) -> list[KernelWork]:
    """One work item per launch of ``partition`` (its ``.steps``: generated kernels and calls) at
    ``dims`` (every symbol of its types bound, e.g. ``{"B": 8, "T": 192}``)."""
    cost = RooflineCost(hardware or Hardware.named("h200"))  # only FLOPs and bytes are read
    out = []
    for step in partition.steps:
        impl = getattr(step, "impl", None)
        if impl == "view":
            continue
        est = cost.estimate(step, dims)
        if est.bound == "free":
            continue
        nbytes = est.bytes
        if impl is None:  # a generated kernel
            name, kind, node = step.name, "fused", step.nodes[0]
        else:
            node = step.node
            name, kind = f"{node.op} %{node.results[0].name}", call_kind(node, impl, dims, hardware)
        dtype = node.inputs[0].dtype if node.inputs else node.results[0].dtype
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
        if kind.startswith("quant_dequant_"):
            out += dequant_works(node, name, kind, est.flops, nbytes, dims, precision)
            continue
        if node.op in MOE_OPS and impl == "library":
            out += moe_works(node, name, est.flops, nbytes, dims, precision, hardware)
            continue
        if node.op == "attention_block" and impl == "library":
            out += attention_block_works(node, name, est.flops, nbytes, dims, precision)
            continue
        if node.op == "mlp_block" and impl == "library":
            out += mlp_block_works(node, name, est.flops, nbytes, dims, precision)
            continue
        serial = decode_serial(node, dims, hardware) if kind == "decode_attention" else 0.0
        out.append(KernelWork(name, kind, est.flops, max(nbytes, 0.0), precision, serial))
    return out


# a split row block's merge (partial stores, the arrival atomic, the last program's reads), in key-tile round
# trips: alone on the H200 it cost about 6 us, five tiles' time (decode_short_context-...-2026-12-03), inside
# the step unmeasured; counted as two of the step's slower round trips
DECODE_MERGE_SERIAL = 2.0


def decode_serial(node: Node, dims: Dims, hardware: Optional[Hardware] = None) -> float:
    """The latency chain of a decode-attention launch as ``generate``'s graph runs it: the key tiles its
    busiest program streams in series (a wide tile, 64 KB at head dim 128, counts one round trip like a
    32 KB one: inside the H200 step the 256-slot chain took 9.0 us in two wide tiles against 13.2 in four),
    at most ``direct_tiles`` (a longer chain reaches the pipeline's steady state, where the bandwidth term
    rules), plus ``DECODE_MERGE_SERIAL`` when row blocks merge. The
    cache capacity is taken as the power-of-two bucket above the cached length; the SM count is
    ``hardware``'s, the H200's when it is not a GPU (as kernel_works' default)."""
    from membound.backends.triton.kernels import decode_attention as da

    q, k = node.inputs[0].type, node.inputs[1].type  # q [B, Hq, S, D], k [B, Hkv, T, D]
    b = bindings(dims)
    bsz, hq, s, d = (int(evaluate(x, b, "cached_attention q")) for x in q.shape)
    hkv = int(evaluate(k.shape[1], b, "cached_attention kv heads"))
    filled = int(dims.get("T", 1))
    gpu = hardware if hardware is not None and hardware.device_type == "cuda" else Hardware.named("h200")
    sms = gpu.sm_count
    tiles, merged = da.serial_tiles(hq // max(hkv, 1) * s, bsz * hkv, filled, 1 << filled.bit_length(), d,
                                    q.dtype, sms)
    return min(tiles, da.direct_tiles(d, q.dtype)) + (DECODE_MERGE_SERIAL if merged else 0.0)


def attention_block_works(node: Node, name: str, flops: float, nbytes: float, dims: Dims,
                          precision: str) -> list[KernelWork]:
    """An ``attention_block`` op as ``kernels/attn_block.py`` runs it: one launch at one row (its own prior: the
    weights streamed, a chain of dependent round trips), else the library's kernels in turn (the norm, the q/k/v
    GEMV with the rotation, two cache writes, flash-decoding, the o GEMV with the residual), the op's bytes and
    FLOPs split as they read them."""
    env = bindings(dims)
    x, qkv_w, o_w = node.inputs[0], node.inputs[2], node.inputs[8]
    k = int(evaluate(x.shape[-1], env, "attention_block K"))
    m = int(evaluate(x.type.numel() / x.shape[-1], env, "attention_block rows"))
    if m == 1:
        return [KernelWork(name, "attention_block", flops, nbytes, precision)]
    itemsize = x.dtype.itemsize
    n_qkv, n_o = int(evaluate(qkv_w.shape[0], env, "qkv rows")), int(evaluate(o_w.shape[1], env, "o columns"))
    qkv_bytes = float(n_qkv * k * itemsize + m * (k + n_qkv) * itemsize)
    o_bytes = float(k * n_o * itemsize + m * (n_o + 2 * k) * itemsize)
    # one cache write: its m * Hkv * D new values read and written (n_qkv - n_o = 2 Hkv D)
    kv_new = float(m * (n_qkv - n_o) * itemsize)
    proj_flops = 2.0 * m * k * (n_qkv + n_o)
    rest = max(nbytes - qkv_bytes - o_bytes - kv_new, 0.0)  # K / V over the filled length, cos / sin
    return [KernelWork(f"{name} (norm)", "fused", 0.0, float(2 * m * k * itemsize), precision),
            KernelWork(f"{name} (q/k/v)", linear_kind("linear_rope", m, n_qkv, k), proj_flops * n_qkv / (n_qkv + n_o),
                       qkv_bytes, precision),
            *[KernelWork(f"{name} (cache write)", "library", 0.0, kv_new, precision)] * 2,
            KernelWork(f"{name} (attention)", "decode_attention", max(flops - proj_flops, 0.0), rest, precision),
            KernelWork(f"{name} (o)", linear_kind("linear_add", m, k, n_o), proj_flops * n_o / (n_qkv + n_o), o_bytes,
                       precision)]


def mlp_block_works(node: Node, name: str, flops: float, nbytes: float, dims: Dims,
                    precision: str) -> list[KernelWork]:
    """An ``mlp_block`` op as ``kernels/mlp_block.py`` runs it: one launch at one row (its own prior), else the
    library's kernels in turn (the norm, the gate/up GEMV with the gating, the down GEMV with the residual), the
    op's FLOPs split as they compute them and each launch's bytes its weight plus the rows it reads and writes."""
    env = bindings(dims)
    x, gate_up = node.inputs[0], node.inputs[2]
    k = int(evaluate(x.shape[-1], env, "mlp_block K"))
    m = int(evaluate(x.type.numel() / x.shape[-1], env, "mlp_block rows"))
    if m == 1:
        return [KernelWork(name, "mlp_block", flops, nbytes, precision)]
    itemsize = x.dtype.itemsize
    i = int(evaluate(gate_up.shape[0], env, "mlp_block 2I")) // 2
    gu_flops, down_flops = 2.0 * m * 2 * i * k, 2.0 * m * k * i
    return [KernelWork(f"{name} (norm)", "fused", 5.0 * m * k, float(2 * m * k * itemsize), precision),
            KernelWork(f"{name} (gate/up)", linear_kind("linear_glu", m, 2 * i, k), gu_flops + 5.0 * m * i,
                       float((2 * i * k + m * (k + i)) * itemsize), precision),
            KernelWork(f"{name} (down)", linear_kind("linear_add", m, k, i), down_flops + m * k,
                       float((k * i + m * (i + 2 * k)) * itemsize), precision)]


def dequant_works(node: Node, name: str, kind: str, flops: float, nbytes: float, dims: Dims,
                  precision: str) -> list[KernelWork]:
    """A quantized matmul run as dequantize + cuBLAS (``quant_matmul.prefill_path``'s choice): the dequantization
    kernel (``quant_dequant.py``) writing the packed weight into a temporary of x's dtype (``kind``: its time
    goes with the packed bytes), then a cuBLAS matmul over the temporary, x and y (the op's other bytes, and
    its FLOPs)."""
    env = bindings(dims)
    acts = 2 if node.op == "quant_gated_linear" else 1  # (x | gate, up), qweight, scales (, bias)
    weight, scales = node.inputs[acts], node.inputs[acts + 1]
    packed = sum(float(evaluate(v.type.nbytes(), env, f"{node.op} packed bytes")) for v in (weight, scales))
    n = float(evaluate(weight.type.shape[0], env, f"{node.op} N"))
    k = float(node.attrs["in_features"])
    dense = n * k * node.inputs[0].type.dtype.itemsize
    return [KernelWork(f"{name} (dequantize)", kind, 0.0, packed, precision),
            KernelWork(f"{name} (matmul)", "cublas", flops, dense + max(nbytes - packed, 0.0), precision)]


# launches of the torch routing a decode step takes when the kernels do not route it (moe_route.sorted_pairs: the
# router's linear, softmax, top-k, then route_pairs), and of the combine in torch (the sum over k, the cast)
ROUTE_LAUNCHES = 4
COMBINE_LAUNCHES = 2
BLOCK_TABLE_LAUNCHES = 3  # the grouped path's block table (kernels/moe.py _block_table), torch ops


def moe_works(node: Node, name: str, flops: float, nbytes: float, dims: Dims, precision: str,
              hardware: Optional[Hardware] = None) -> list[KernelWork]:
    """A ``moe`` / ``quant_moe`` op as the launches ``kernels/moe.py`` makes at these dims (``moe_experts`` /
    ``quant_moe_experts``: one launch sorting the given routing's pairs, the grouped path's block table, the two
    kernels, the combine). Decode path
    (``moe_path``) routed in the kernels (``decode_plan``): the router's logits (``fused``), ``torch.topk``,
    the gate/up and the down kernel (``moe_decode``; the combine is the down kernel's). Routed in torch: its
    routing launches, the two kernels and the combine. Grouped path: routing, block table, two grouped GEMMs
    (``moe_grouped``), combine. The op's bytes split as its parts read them: the router and x to the routing,
    two thirds of the experts' to gate/up (with x), the rest to down; its FLOPs likewise."""
    import importlib

    from membound.ir.ops.moe import expert_bytes, expert_top_k, moe_operands

    km = importlib.import_module("membound.backends.triton.kernels.moe")  # (the package re-exports a function moe)
    hw = hardware or Hardware.named("h200")
    env = bindings(dims)
    given = node.op in ("moe_experts", "quant_moe_experts")  # the graph's routing (weights, ids), not a router
    x = node.inputs[0]
    d = int(evaluate(x.shape[-1], env, f"{node.op} D"))
    t = int(evaluate(x.type.numel() / x.shape[-1], env, f"{node.op} tokens"))
    e, _ = expert_bytes(node)
    top_k, i = expert_top_k(node), int(node.inputs[3 if given else 2].shape[1])
    scheme = node.attrs.get("scheme") if node.op.startswith("quant_") else None
    group = int(node.attrs.get("group_size", 0) or 0)
    dtype = x.dtype
    x_bytes = float(evaluate(x.type.nbytes(), env, f"{node.op} x bytes"))
    routing_bytes = (float(evaluate(node.inputs[1].type.nbytes() + node.inputs[2].type.nbytes(), env,
                                    f"{node.op} routing bytes")) if given
                     else float(node.inputs[1].type.nbytes()) + x_bytes)
    experts = max(nbytes - routing_bytes - x_bytes, 0.0)  # the active experts' weights (and a shared expert's)
    router_flops = 0.0 if given else 2.0 * t * e * d

    def launches(part: str, kind: str, count: int = 1, work: float = 0.0, moved: float = 0.0) -> list[KernelWork]:
        return [KernelWork(f"{name} ({part})", kind, work, moved, precision)] * count  # FLOPs, bytes

    path = km.moe_path(t, e, top_k, d, i, dtype, torch.device("cpu"), scheme, group, hw=hw)
    routed = shared = False
    if path == "decode" and not given:
        pairs = km.int4_pairs_path(scheme == "int4", dtype)
        routed = km.decode_plan(t, e, top_k, d, i, scheme == "int4", group, pairs, hw.sm_count).routed
        shared = bool(moe_operands(node)[1])
    if given:  # the pairs sorted in one launch (moe_route.given_pairs), the grouped path's block table in torch
        head = launches("routing", "fused", 1, 0.0, routing_bytes)
        head += launches("routing", "torch", BLOCK_TABLE_LAUNCHES) if path != "decode" else []
    elif routed:
        head = launches("router", "fused", 1, router_flops, routing_bytes) + launches("top-k", "torch")
    else:
        head = launches("router", "cublas", 1, router_flops, routing_bytes)
        head += launches("routing", "torch", ROUTE_LAUNCHES - 1 + (BLOCK_TABLE_LAUNCHES if path != "decode" else 0))
    tail = [] if routed and not shared else launches("combine", "torch", COMBINE_LAUNCHES)
    kind = "moe_decode" if path == "decode" else "moe_grouped"
    expert_flops = max(flops - router_flops, 0.0)
    body = (launches("gate/up", kind, 1, expert_flops * 2 / 3, experts * 2 / 3 + x_bytes)
            + launches("down", kind, 1, expert_flops / 3, experts / 3 + x_bytes))
    return head + body + tail


__all__ = ["attention_block_works", "call_kind", "dequant_works", "kernel_works", "linear_kind", "moe_works",
           "quant_kind"]
