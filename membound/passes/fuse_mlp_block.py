"""fuse-mlp-block: a decode layer's gated MLP with its norm and residual becomes one ``mlp_block`` op (issue 13).

```
// before: a Llama layer's MLP at decode, after fuse-linear-glu and fuse-linear-residual
graph @f(%x: f32[B, 1, 16]) params(%ln: f32[16], %wgu: f32[24, 16], %wd: f32[16, 12]) {
  %h = rms_norm(%x, %ln) {eps=1e-05} : f32[B, 1, 16]
  %g = linear_glu(%h, %wgu) {act="silu"} : f32[B, 1, 12]
  %y = linear_add(%g, %wd, %x) : f32[B, 1, 16]
  return %y
}
// after
graph @f(%x: f32[B, 1, 16]) params(%ln: f32[16], %wgu: f32[24, 16], %wd: f32[16, 12]) {
  %0 = mlp_block(%x, %ln, %wgu, %wd) {eps=1e-05, act="silu"} : f32[B, 1, 16]
  return %0
}
```

Why: at batch 1 the MLP is three dependent kernels (the norm, the gate/up GEMV, the down GEMV with the residual);
one launch of ordered work items (``kernels/mlp_block.py``) pays one launch's ramp and tail instead of three and has
the down projection's first weight tiles requested while the gate/up rows still stream. With fuse-attention-block a
Llama layer is then 2 launches (the ``decode-layer`` pipeline). At more than one row the op runs the library's
kernels in turn (its wrapper says so), so the rewrite never costs a batch.

What it matches: ``linear_add(linear_glu(rms_norm(x, w_norm), w_gate_up), w_down, x)`` where the norm and the
gating are read only by the next node, the residual is the norm's input itself, the three weights are parameters
(the kernel reads them before its PDL wait), no bias, silu gating. A form not matched is left alone, named in the
pass log when it got as far as a ``linear_glu`` over an ``rms_norm``.

When it fires: in the ``decode-layer`` pipeline (``MEMBOUND_DECODE_PIPELINE=decode-layer``, an A/B setting: slower
than the default on an H200, session 20), or any pipeline that lists it after fuse-linear-glu and
fuse-linear-residual; where the cost model estimates the op faster than the nodes it replaces at the decode dims,
or without a cost model in the GEMV range (the roofline model counts the launch it saves, not the kernel's ~60%
streaming: it does not decline the op).
"""

from __future__ import annotations

from typing import Optional

from membound.ir import Graph, Node
from membound.passes.gemv_regime import fuse_blocks
from membound.passes.manager import PassContext, register_pass
from membound.passes.pattern import is_2d_param, is_single_use


def match_mlp(glu: Node) -> tuple[Optional[tuple[list, dict, list[Node]]], str]:
    """``(inputs, attrs, nodes replaced: consumers first)`` of the MLP block around the ``linear_glu`` ``glu``, or
    ``(None, why not; "" when not worth a log line: no norm before it)``."""
    h = glu.inputs[0]
    norm = h.producer
    if norm is None or norm.op != "rms_norm":
        return None, ""
    if len(norm.inputs) != 2 or norm.inputs[1].kind != "param" or not is_single_use(h):
        return None, "the norm has no parameter weight, or its output is read elsewhere too"
    if glu.attrs.get("act") != "silu":
        return None, f"act={glu.attrs.get('act')!r} (the kernel gates with silu)"
    g = glu.results[0]
    users = list(g.users)
    if not is_single_use(g) or len(users) != 1 or users[0].op != "linear_add":
        return None, "the gating is not read by one linear_add (run fuse-linear-residual first)"
    down = users[0]
    x = norm.inputs[0]
    if len(down.inputs) != 3 or down.inputs[0] is not g or down.inputs[2] is not x:
        return None, "the down projection has a bias, or its residual is not the norm's input"
    if not (is_2d_param(glu.inputs[1]) and is_2d_param(down.inputs[1])):
        return None, "a weight is not a parameter"
    if down.results[0].type != x.type:
        return None, "the block's output is not of its input's type"
    inputs = [x, norm.inputs[1], glu.inputs[1], down.inputs[1]]
    return (inputs, dict(eps=norm.attrs["eps"], act="silu"), [down, glu, norm]), ""


@register_pass("fuse-mlp-block")
def fuse_mlp_block(graph: Graph, ctx: PassContext) -> bool:
    """Replace each decode MLP block (rms_norm -> linear_glu -> linear_add of the norm's input) with one
    ``mlp_block`` op."""
    return fuse_blocks(graph, ctx, "linear_glu", "mlp_block", match_mlp, lambda b: (b[0], b[1], b[2], b[2][0]))
