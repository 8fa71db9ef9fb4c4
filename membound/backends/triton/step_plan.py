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
  -> ``attention``; other library kernels -> ``library``; ops run by their torch reference -> ``torch``.

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

# our GEMV library's ops; the fused forms (a norm prologue, a residual epilogue) run the same kernel
LINEAR_OPS = ("linear", "gated_linear", "rms_norm_linear", "linear_add", "gated_linear_add",
              "rms_norm_linear_sumsq", "linear_add_sumsq", "gated_linear_add_sumsq", "linear_glu")
_GATED = ("gated_linear", "gated_linear_add", "gated_linear_add_sumsq")
QUANT_OPS = ("quant_linear", "quant_gated_linear")

Dims = Mapping[Union[str, sympy.Symbol], int]


def linear_kind(op: str, m: int) -> str:
    """The kernel kind the library runs ``op`` (a bf16 GEMV op) with at ``m`` rows (``kernels/linear.py``'s
    path choice)."""
    from membound.backends.triton.kernels.linear import SMALL_M, pick_config

    if op in QUANT_OPS:
        raise ValueError(f"linear_kind: {op} takes its kind from its scheme and shape: use quant_kind")
    if m > SMALL_M:
        return "cublas"
    # the FMA/dot choice depends on m only (the device enters the split count, which the prior covers)
    dot = pick_config(max(m, 1), 64, 64, torch.bfloat16, torch.device("cpu")).use_dot
    kind = "gemv_dot" if dot else "gemv"
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
        return linear_kind(node.op, m)
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
        out.append(KernelWork(name, kind, est.flops, max(nbytes, 0.0), precision))
    return out


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


__all__ = ["call_kind", "dequant_works", "kernel_works", "linear_kind", "quant_kind"]
