"""Errors raised while turning a model into membound IR.

Each names what the user gave: the model class, the ATen op, the module path and source line that
produced it, and what to do next.
"""

from __future__ import annotations

_FALLBACK_HINT = ("pass fallback=\"torch\" to the capture function to run this op through torch as an opaque "
                  "`torch_call` node (no fusion across it), or add a rule for it to membound/frontends/aten_table.py")


class CaptureError(Exception):
    """The model could not be captured (it raised while being traced, or returns something the IR
    cannot express, such as a Python number computed from tensor data)."""


class UnsupportedOpError(CaptureError):
    """An op in the captured graph has no mapping to a membound IR op (or a use of it that the IR
    cannot express).

    Attributes:
        target: the qualified op name (``"aten.fft_fft.default"``).
        module: the module path and class that called it (``"model.layers.0.mlp (MixtralSparseMoeBlock)"``).
        source: the source line that called it (``"modeling_x.py:120 in forward: y = torch.fft.fft(x)"``).
        reason: why it is unsupported, when it is not simply missing from the table.
        fallback: whether ``fallback="torch"`` would get past it.
    """

    def __init__(self, target: str, module: str, source: str, reason: str = "", fallback: bool = True) -> None:
        self.target = target
        self.module = module
        self.source = source
        self.reason = reason
        self.fallback = fallback
        head = f"cannot translate op {target}: {reason}" if reason else f"no membound IR mapping for op {target}"
        hint = _FALLBACK_HINT if fallback else "no fallback exists for this; change the model code at that line"
        msg = (f"{head}\n"
               f"  called from module: {module or '(none: not inside an nn.Module)'}\n"
               f"  at: {source or '<unknown source line>'}\n"
               f"  what to do: {hint}")
        super().__init__(msg)
