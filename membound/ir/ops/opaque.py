"""``torch_call``: the explicit fallback for a torch op the frontend has no mapping for.

``torch_call(*xs) {target="aten::foo.default", args=("%0", 2, ("%1", "%0")), kwargs=(("alpha", 2),)}``
calls ``torch.ops.aten.foo.default(xs[0], 2, (xs[1], xs[0]), alpha=2)``:

- ``target`` is ``"namespace::name.overload"`` (``".overload"`` optional: the packet is called then);
- ``args`` is a template of the positional arguments, nested tuples allowed, in which a string
  ``"%N"`` stands for the node's N-th input tensor and anything else is passed as is;
- ``kwargs`` is a tuple of ``(name, value)`` pairs, templated the same way (an extension of
  docs/ops.md: some ATen ops need keyword-only arguments).

Its result types cannot be derived from the declaration: the frontend records them from the
captured graph and passes ``types=`` to ``Graph.create_node``. ``infer`` therefore raises, and the
declaration carries ``infer_from_capture=True`` so the verifier does not re-infer. The frontend uses
this op only on purpose, never as a silent catch-all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from membound.ir.ops import REQUIRED, define_op, zero_flops
from membound.ir.ops._common import fail
from membound.ir.types import TensorType

_OP = "torch_call"


def resolve_target(target: Any) -> Any:
    """``"aten::add.Tensor"`` -> ``torch.ops.aten.add.Tensor``; a clear error when it does not exist."""
    if not isinstance(target, str) or "::" not in target:
        fail(_OP, f"attribute target must look like 'aten::name.overload', got {target!r}")
    namespace, qualified = target.split("::", 1)
    name, _, overload = qualified.partition(".")
    try:
        fn = getattr(getattr(torch.ops, namespace), name)
        return getattr(fn, overload) if overload else fn
    except (AttributeError, RuntimeError) as e:
        fail(_OP, f"no torch op {target!r} ({e}); is the library that defines it imported?")


def _fill(template: Any, tensors: Sequence[torch.Tensor]) -> Any:
    """Replace ``"%N"`` slots in a (nested) template by the N-th tensor."""
    if isinstance(template, str) and template.startswith("%") and template[1:].isdigit():
        i = int(template[1:])
        if i >= len(tensors):
            fail(_OP, f"argument slot {template!r} refers past the {len(tensors)} inputs")
        return tensors[i]
    if isinstance(template, (tuple, list)):
        return type(template)(_fill(t, tensors) for t in template)
    return template


def _infer_torch_call(*xs: TensorType, target: Any, args: Any, kwargs: Any) -> list[TensorType]:
    fail(_OP, f"cannot infer the result types of {target!r}: the frontend must pass explicit result types "
         "(Graph.create_node(..., types=[...]))", TypeError)


def _torch_call(*xs: torch.Tensor, target: str, args: Any, kwargs: Any) -> Any:
    fn = resolve_target(target)
    if not isinstance(args, (tuple, list)):
        fail(_OP, f"attribute args must be a tuple template, got {args!r}", TypeError)
    kw = {str(k): _fill(v, xs) for k, v in kwargs}
    out = fn(*_fill(tuple(args), xs), **kw)
    return tuple(out) if isinstance(out, (tuple, list)) else out


define_op(_OP, inputs=("*xs",), attrs={"target": REQUIRED, "args": (), "kwargs": ()}, kind="opaque",
          infer=_infer_torch_call, reference=_torch_call, flops=zero_flops, infer_from_capture=True, host_sync=True,
          doc="calls the torch op `target` with args/kwargs templates whose '%N' slots are the inputs")
