"""The accuracy of a quantized model: per quantized layer, the relative error of its output against the
same layer with the float weight, on the same (calibration) input; and the error of the final output.

A ``quant_moe`` is one row: its routed experts' combined output (routing, top-k weights and combine as
the op does them, the shared expert left out since it stays float) against the same experts in float,
on the same tokens. Routing is the float router's on both sides, so the row is the experts' own error.

    report = quantization_report(float_graph, quantized_graph, float_weights, inputs)
    print(report)

Each layer is compared on the *quantized* model's own activations (both products read the same input),
so a row is the error that layer adds, not the error accumulated before it; the last line is the
accumulated error at the output. Errors are ``||y_q - y|| / ||y||`` over the calibration batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from membound.backends.reference import run_graph
from membound.ir.graph import Graph
from membound.ir.ops.moe import moe_operands

QUANT_OPS = ("quant_linear", "quant_gated_linear")  # and quant_moe, one row per op


@dataclass
class LayerError:
    node: str
    weight: str
    scheme: str
    shape: tuple[int, ...]  # the float weight's; a moe op's: [E, I, D] of its gate experts
    rel_error: float


@dataclass
class QuantReport:
    layers: list[LayerError] = field(default_factory=list)
    output_error: Optional[float] = None
    note: str = ""

    def __str__(self) -> str:
        if not self.layers:
            return f"quantization accuracy: {self.note or 'no quantized layer'}"
        width = max(len(e.weight) for e in self.layers)
        shape_width = max(len(_dims(e.shape)) for e in self.layers)
        lines = ["quantization accuracy (relative output error of each layer against its float weight, "
                 "same input; calibration batch)"]
        for e in self.layers:
            shape = _dims(e.shape)
            lines.append(f"  {e.weight:<{width}}  {e.scheme:<4}  {shape:<{shape_width}}  {e.rel_error:.3e}")
        if self.output_error is not None:
            lines.append(f"  model output (logits) vs the unquantized model: {self.output_error:.3e}")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


def _dims(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _float_weight(graph: Graph, name: str, weights: dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
    from membound.passes.quantize_weights import sourced_rows

    parts = sourced_rows(graph, name, weights)
    if parts is None:
        return None
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def quantization_report(float_graph: Graph, quant_graph: Graph, weights: dict[str, torch.Tensor],
                        inputs: Sequence[torch.Tensor]) -> QuantReport:
    """Compare ``quant_graph`` with ``float_graph`` on ``inputs`` (see the module docstring).

    ``weights``: the float parameters by name (a model's ``named_parameters``)."""
    if any(t.device.type == "meta" for t in inputs) or any(t.device.type == "meta" for t in weights.values()):
        return QuantReport(note="the model is on the meta device: the accuracy report needs real weights")
    probe = quant_graph.copy()
    outputs = list(probe.outputs)
    pairs: list[tuple[int, LayerError]] = []
    for node in list(probe.nodes):
        if node.op in ("quant_moe", "quant_moe_experts"):
            moe = _moe_probe(probe, node, float_graph, weights)
            if moe is not None:
                layer, outs = moe
                pairs.append((len(outputs), layer))
                outputs += outs
            continue
        if node.op not in QUANT_OPS:
            continue
        name = node.meta.get("quantized_from")
        w = _float_weight(probe, name, weights) if name else None
        if w is None:
            continue
        if node.meta.get("quantized_transposed"):
            w = w.t()
        wv = probe.add_param(f"{name}.float_probe", _type_of(w), w)
        if node.op == "quant_linear":
            ref = probe.create_node("linear", [node.inputs[0], wv] + list(node.inputs[3:]))
        else:
            ref = probe.create_node("gated_linear", [node.inputs[0], node.inputs[1], wv], {"act": node.attrs["act"]})
        probe.append(ref)
        a = node.attrs
        layer = LayerError(node.results[0].name, name, a["scheme"], (int(w.shape[0]), int(w.shape[1])), 0.0)
        pairs.append((len(outputs), layer))
        outputs += [node.results[0], ref.results[0]]
    probe.outputs = outputs
    with torch.no_grad():
        got = run_graph(probe, list(inputs))
        exact = run_graph(float_graph, list(inputs))
    report = QuantReport()
    for index, layer in pairs:
        q, f = got[index].float(), got[index + 1].float()
        layer.rel_error = float((q - f).norm() / f.norm().clamp_min(1e-30))
        report.layers.append(layer)
    if got and exact:
        q, f = got[0].float(), exact[0].float()
        report.output_error = float((q - f).norm() / f.norm().clamp_min(1e-30))
    return report


def _moe_probe(probe: Graph, node: Any, float_graph: Graph, weights: dict[str, torch.Tensor]
               ) -> Optional[tuple[LayerError, list[Any]]]:
    """Add to ``probe`` the routed experts of ``node`` (a ``quant_moe``) twice, quantized and float, without
    the shared expert; the row and the two results. The float experts: the model's parameters by name, or
    the float graph's (fuse-moe stacks looped experts into new parameters)."""
    names = node.meta.get("quantized_from")
    if not names:
        return None
    floats = []
    for name in names:
        w = weights.get(name)
        if w is None:
            w = float_graph.tensors.get(name)
        if w is None or w.dim() != 3:
            return None
        floats.append(probe.add_param(f"{name}.float_probe", _type_of(w), w))
    routed = {k: v for k, v in node.attrs.items() if k not in ("scheme", "group_size")}
    if node.op == "quant_moe_experts":  # the graph's routing (weights, ids) feeds both
        quant = probe.create_node(node.op, list(node.inputs), dict(node.attrs))
        ref = probe.create_node("moe_experts", [*node.inputs[:3], *floats, *node.inputs[9:]], routed)
    else:
        head, _, biases = moe_operands(node)  # (the shared expert left out; the biases are the routed experts')
        quant = probe.create_node("quant_moe", [*head, *biases], dict(node.attrs))
        ref = probe.create_node("moe", [node.inputs[0], node.inputs[1], *floats, *biases], routed)
    probe.append(quant)
    probe.append(ref)
    parts = [n.split(".") for n in names]
    common = [seg[0] for seg in zip(*parts) if len(set(seg)) == 1]
    prefix = ".".join(common[:next((i for i, seg in enumerate(zip(*parts)) if len(set(seg)) != 1), len(common))])
    shape = tuple(int(d) for d in floats[0].shape)
    layer = LayerError(node.results[0].name, f"{prefix or 'moe'}.* (experts)", node.attrs["scheme"], shape, 0.0)
    return layer, [quant.results[0], ref.results[0]]


def _type_of(t: torch.Tensor):
    from membound.ir.types import TensorType

    return TensorType(t.dtype, tuple(t.shape))
