"""Frontends: capture a model (torch.export, Dynamo, or fx.symbolic_trace) and translate its ATen graph
to membound IR through one table (``aten_table.TABLE``). Imports only ``membound.ir``."""

from membound.frontends.capture import Capture
from membound.frontends.dynamo import capture_dynamo
from membound.frontends.errors import CaptureError, UnsupportedOpError
from membound.frontends.export import capture_export
from membound.frontends.fx import capture_fx

__all__ = ["Capture", "CaptureError", "UnsupportedOpError", "capture_dynamo", "capture_export", "capture_fx"]
