"""What a Triton executable launches, as the cost model's per-launch work list (``cost/step.py``).

Each step of a partition becomes one :class:`~membound.cost.step.KernelWork` (views launch nothing):

- a generated kernel (pointwise, row, sections) -> ``fused``, its bytes the partition's boundary bytes;
- ``linear`` / ``gated_linear`` -> the path the library takes at that many rows (``kernels/linear.py``):
  ``gemv`` (register FMA, M <= 2), ``gemv_dot`` (tensor cores, M <= ``SMALL_M``), ``cublas`` above;
  ``_gated`` for the gated form on our kernel; the fused forms (``rms_norm_linear``, ``linear_add``,
  ``gated_linear_add``) run the same kernel and take the same kinds: what the norm prologue adds (each
  program re-reads its rows of x from L2 for their rms) and the residual tile are not priced apart yet;
  ``benches/profile_step.py`` on a GPU measures them;
- ``quant_linear`` / ``quant_gated_linear`` -> ``quant_gemv`` up to ``SMALL_M`` rows, ``quant_mma`` above;
- ``cached_attention`` -> ``decode_attention`` for one query per row, else ``attention``; ``attention``
  -> ``attention``; other library kernels -> ``library``; ops run by their torch reference -> ``torch``.

One launch per library call: the split kernels (split-K linear, flash decoding) reduce in their last
program, not in a second kernel.

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
LINEAR_OPS = ("linear", "gated_linear", "rms_norm_linear", "linear_add", "gated_linear_add")
_GATED = ("gated_linear", "gated_linear_add")
QUANT_OPS = ("quant_linear", "quant_gated_linear")

Dims = Mapping[Union[str, sympy.Symbol], int]


def linear_kind(op: str, m: int) -> str:
    """The kernel kind the library runs ``op`` with at ``m`` rows (``kernels/linear.py``'s path choice)."""
    from membound.backends.triton.kernels.linear import SMALL_M, pick_config

    if op in QUANT_OPS:
        return "quant_gemv" if m <= SMALL_M else "quant_mma"
    if m > SMALL_M:
        return "cublas"
    # the FMA/dot choice depends on m only (the device enters the split count, which the prior covers)
    dot = pick_config(max(m, 1), 64, 64, torch.bfloat16, torch.device("cpu")).use_dot
    kind = "gemv_dot" if dot else "gemv"
    return kind + ("_gated" if op in _GATED else "")


def call_kind(node: Node, impl: str, dims: Dims) -> str:
    """The kernel kind of a node run as a call (``impl``: "library" or "torch")."""
    if impl == "torch":
        return "torch"
    if node.op in LINEAR_OPS + QUANT_OPS:
        x = node.inputs[0].type
        k = x.shape[-1]
        m = int(evaluate(x.numel() / k, bindings(dims), f"{node.op} rows"))
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
            name, kind = f"{node.op} %{node.results[0].name}", call_kind(node, impl, dims)
        dtype = node.inputs[0].dtype if node.inputs else node.results[0].dtype
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
        out.append(KernelWork(name, kind, est.flops, max(nbytes, 0.0), precision))
    return out


__all__ = ["call_kind", "kernel_works", "linear_kind"]
