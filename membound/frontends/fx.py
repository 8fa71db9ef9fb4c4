"""The plain-module frontend: ``torch.fx.symbolic_trace``, then the export path on the traced GraphModule.

Useful for small hand-written modules whose Python control flow symbolic tracing can follow; it
fails on Hugging Face models (transformers 5.x cannot be symbolically traced), for which
:func:`~membound.frontends.export.capture_export` is the frontend to use.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.fx

from membound.frontends.capture import Capture
from membound.frontends.errors import CaptureError
from membound.frontends.export import capture_export


def capture_fx(module: torch.nn.Module, args: Sequence[Any] = (), kwargs: Optional[dict[str, Any]] = None,
               dynamic: bool = True, fallback: Optional[str] = None) -> Capture:
    """Trace ``module`` with ``torch.fx.symbolic_trace`` and capture the traced GraphModule for this call.

    The traced module shares the original's submodules and parameters, so parameter names and
    tensors are the original's. Raises ``CaptureError`` when symbolic tracing fails.
    """
    name = type(module).__name__
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as e:  # symbolic tracing fails on data-dependent Python control flow and more
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CaptureError(f"torch.fx.symbolic_trace could not trace {name}: {type(e).__name__}: {first}\n"
                           "  use the export frontend instead: membound.frontends.capture_export(model, args, "
                           "kwargs) (torch.export follows Python control flow for the given inputs)") from e
    return capture_export(gm, args, kwargs, dynamic=dynamic, fallback=fallback, name=name)
