"""How each row reduction is written in a row kernel (the ``row`` writer of its lowering entry).

A row kernel runs one program per row: ``cols = tl.arange(0, BLOCK_N)`` along the reduced (last) dim,
``mask = cols < N``. A writer gets the emitter, the node, its input ``x`` already loaded over the row
(a block of ``BLOCK_N`` lanes) and ``n``, the code of the row length; it returns the result: one
number per row (``sum``...), or a block, one value per lane (``softmax``..., the entries marked
``per_element``). Masked-off lanes hold garbage and must not reach a reduction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from membound.backends.triton.values import TL_DTYPE, Val, compute_dtype, convert, literal_code
from membound.ir.graph import Node

if TYPE_CHECKING:
    from membound.backends.triton.kernel import KernelEmitter

RowWriter = Callable[["KernelEmitter", Node, Val, str], Val]


def _name(node: Node) -> str:
    return f"%{node.results[0].name}"


def write_sum_mean(em: "KernelEmitter", node: Node, x: Val, n: str) -> Val:
    out, op, name = node.results[0], node.op, _name(node)
    acc = compute_dtype(out.dtype) if op == "mean" or node.attrs["dtype"] is not None or out.dtype.is_floating_point \
        else torch.int64
    xs = convert(x, acc)
    s = em.assign(f"tl.sum(tl.where(mask, {xs}, 0), axis=0)", acc, False, f"{name} {op}")
    if op == "mean":
        return em.assign(f"{s.code} / {n}", out.dtype, False, f"{name} mean")
    return s


def write_extremum(em: "KernelEmitter", node: Node, x: Val, n: str) -> Val:
    op, name, dt = node.op, _name(node), node.results[0].dtype
    lo = literal_code(float("-inf"), dt) if dt.is_floating_point else str(torch.iinfo(dt).min)
    hi = literal_code(float("inf"), dt) if dt.is_floating_point else str(torch.iinfo(dt).max)
    fn, fill = ("tl.max", lo) if op == "amax" else ("tl.min", hi)
    xs = convert(x, dt)
    m = em.assign(f"{fn}(tl.where(mask, {xs}, {fill}), axis=0)", dt, False, f"{name} {op}")
    if not dt.is_floating_point:
        return m
    # torch's amax/amin of a row holding a NaN is NaN; tl.max/tl.min skip NaNs
    nans = em.assign(f"tl.max(tl.where(mask & ({xs} != {xs}), 1, 0), axis=0)", torch.int32, False,
                     f"{name} any NaN in the row")
    return em.assign(f"tl.where({nans.code} > 0, float(\"nan\"), {m.code})", dt, False, f"{name} {op}")


def extremum_refusal(node: Node) -> "str | None":
    return "no bool row max/min in generated kernels" if node.inputs[0].dtype == torch.bool else None


def write_cumsum(em: "KernelEmitter", node: Node, x: Val, n: str) -> Val:
    out = node.results[0]
    acc = compute_dtype(out.dtype)
    return em.assign(f"tl.cumsum(tl.where(mask, {convert(x, acc)}, 0), axis=0)", out.dtype, True,
                     f"{_name(node)} cumsum")


def write_softmax(em: "KernelEmitter", node: Node, x: Val, n: str) -> Val:
    name, dt = _name(node), node.results[0].dtype
    xs = convert(x, dt)
    m = em.assign(f"tl.max(tl.where(mask, {xs}, float(\"-inf\")), axis=0)", dt, False, f"{name} row max")
    e = em.assign(f"tl.where(mask, tl.exp({xs} - {m.code}), 0)", dt, True)
    s = em.assign(f"tl.sum({e.code}, axis=0)", dt, False, f"{name} row sum")
    if node.op == "softmax":
        return em.assign(f"{e.code} / {s.code}", dt, True, f"{name} softmax")
    return em.assign(f"{xs} - {m.code} - tl.log({s.code})", dt, True, f"{name} log_softmax")


def write_rms_norm(em: "KernelEmitter", node: Node, x: Val, n: str) -> Val:
    name, out = _name(node), node.results[0]
    xf = convert(x, torch.float32)
    ms = em.assign(f"tl.sum(tl.where(mask, {xf} * {xf}, 0), axis=0) / {n}", torch.float32, False,
                   f"{name} mean of squares")
    y = f"{xf} * tl.rsqrt({ms.code} + {literal_code(node.attrs['eps'], torch.float32)})"
    xdt = node.inputs[0].dtype
    if xdt != torch.float32:  # the reference rounds to x's dtype before the weight
        y = f"({y}).to({TL_DTYPE[xdt]}).to({TL_DTYPE[compute_dtype(xdt)]})"
    if len(node.inputs) > 1:
        w = em.emit(node.inputs[1], (em.cols,))  # type: ignore[arg-type]
        y = f"{y} * {convert(w, out.dtype)}"
    return em.assign(y, out.dtype, True, f"{name} rms_norm")


def write_layer_norm(em: "KernelEmitter", node: Node, x: Val, n: str) -> Val:
    name, out = _name(node), node.results[0]
    xf = convert(x, torch.float32)
    mu = em.assign(f"tl.sum(tl.where(mask, {xf}, 0), axis=0) / {n}", torch.float32, False, f"{name} mean")
    dx = em.assign(f"tl.where(mask, {xf} - {mu.code}, 0)", torch.float32, True)
    var = em.assign(f"tl.sum({dx.code} * {dx.code}, axis=0) / {n}", torch.float32, False, f"{name} var")
    y = f"{dx.code} * tl.rsqrt({var.code} + {literal_code(node.attrs['eps'], torch.float32)})"
    if len(node.inputs) > 1:
        y = f"{y} * {convert(em.emit(node.inputs[1], (em.cols,)), torch.float32)}"  # type: ignore[arg-type]
    if len(node.inputs) > 2:
        y = f"{y} + {convert(em.emit(node.inputs[2], (em.cols,)), torch.float32)}"  # type: ignore[arg-type]
    return em.assign(y, out.dtype, True, f"{name} layer_norm")
