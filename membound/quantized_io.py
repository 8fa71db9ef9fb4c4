"""Save and load quantized weights: ``membound.save_quantized(compiled, dir)`` and
``membound.compile(model, quantized=dir)``, so a model is quantized once.

The folder holds ``quantized.safetensors`` (the packed weights and scales, never a pickle) and
``quantization.json`` (the scheme, group size, skip patterns, and for every weight its name, the
float shape and dtype it stands for). Tensors are keyed ``<parameter name>.qweight`` /
``<parameter name>.scales`` by the float parameter's name in the captured graph. A weight that
merge-linear made by concatenating several (``q_proj_k_proj_v_proj``) is also saved as its sources'
rows, so a later compile finds it whichever pipeline it runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from membound.ir.graph import Graph

MANIFEST = "quantization.json"
TENSORS = "quantized.safetensors"
FORMAT_VERSION = 1


def _graphs_of(compiled: Any) -> list[Graph]:
    graphs = [entry.ir for entry in getattr(compiled, "entries", [])]
    program = getattr(compiled, "_kv_program", None)
    if program is not None:
        graphs.append(program.prefill_graph)
    return graphs


def _packed_of(graph: Graph) -> dict[str, tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
    from membound.passes.quantize_weights import packed_experts, packed_linears

    out: dict[str, tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] = {}
    for node, name, q, s in packed_experts(graph):
        k = _expert_k(node, name)
        out[name] = (q, s, {"scheme": node.attrs["scheme"], "group_size": node.attrs["group_size"],
                            "shape": [int(q.shape[0]), int(q.shape[1]), k], "dtype": str(s.dtype).replace("torch.", ""),
                            "experts": True})
    for node, name, q, s in packed_linears(graph):
        info = {"scheme": node.attrs["scheme"], "group_size": node.attrs["group_size"],
                "shape": [int(q.shape[0]), int(node.attrs["in_features"])], "dtype": str(s.dtype).replace("torch.", "")}
        sources = graph.meta.get("param_sources", {}).get(name, ())
        if not sources:
            out[name] = (q, s, info)
        rows = 0
        for src, n in sources:
            # a merge-linear weight is saved as its originals (copies: safetensors refuses shared storage);
            # loading finds the merged form from them
            out.setdefault(src, (q[rows:rows + n].clone(), s[rows:rows + n].clone(),
                                 dict(info, shape=[n, info["shape"][1]])))
            rows += n
    return out


def _expert_k(node: Any, name: str) -> int:
    """K of the expert weight ``name`` of a ``quant_moe`` / ``quant_moe_experts`` (its float shape's last dim)."""
    from membound.ir.ops.moe import packed_expert_operands

    return int(next(k for q, _, k in packed_expert_operands(node) if q.name == f"{name}.qweight"))


def save_quantized(compiled: Any, directory: Union[str, os.PathLike[str]]) -> Path:
    """Write the packed weights of a compiled, quantized model into ``directory`` (created if needed)."""
    from safetensors.torch import save_file

    config = getattr(compiled, "quant_config", None)
    if config is None:
        raise ValueError("save_quantized: this model was compiled without quantize=...; compile it with "
                         "membound.compile(model, quantize='int8' | 'int4' | 'fp8') first")
    graphs = _graphs_of(compiled)
    if not graphs:
        raise RuntimeError("save_quantized: nothing compiled yet: call the compiled model (or membound.generate) "
                           "once, or pass example_inputs= to membound.compile")
    packed: dict[str, tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] = {}
    for graph in graphs:
        for name, item in _packed_of(graph).items():
            packed.setdefault(name, item)
    if not packed:
        raise RuntimeError("save_quantized: the compiled graphs hold no quantized weights (the cost model declined "
                           "every linear, or every one matched a skip pattern)")
    tensors: dict[str, torch.Tensor] = {}
    for name, (q, s, _) in packed.items():
        tensors[f"{name}.qweight"] = q.detach().contiguous().cpu()
        tensors[f"{name}.scales"] = s.detach().contiguous().cpu()
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / TENSORS))
    manifest = {"format_version": FORMAT_VERSION, "scheme": config.scheme, "group_size": config.group_size,
                "skip": list(config.skip), "weights": {name: info for name, (_, _, info) in sorted(packed.items())}}
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def load_quantized(directory: Union[str, os.PathLike[str]], config: Optional[Any] = None) -> Any:
    """A ``QuantConfig`` whose ``store`` holds the packed weights saved in ``directory``.

    ``config`` (from ``quantize=``) must agree with the folder's scheme and group size when given.
    """
    from safetensors.torch import load_file

    from membound.passes.quantize_weights import QuantConfig

    path = Path(directory)
    if not (path / MANIFEST).is_file() or not (path / TENSORS).is_file():
        raise FileNotFoundError(f"quantized={str(directory)!r}: expected {MANIFEST} and {TENSORS} there, written by "
                                f"membound.save_quantized(compiled, dir)")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"quantized={str(directory)!r}: format version {manifest.get('format_version')!r}, this "
                         f"membound reads {FORMAT_VERSION}")
    saved = QuantConfig(scheme=manifest["scheme"], group_size=manifest["group_size"], skip=tuple(manifest["skip"]))
    if config is not None and (config.scheme, config.effective_group_size) != (saved.scheme,
                                                                               saved.effective_group_size):
        raise ValueError(f"quantize={config.scheme!r} (group {config.group_size}) disagrees with the folder "
                         f"{str(directory)!r}, saved as {saved.scheme!r} (group {saved.group_size}); omit quantize= "
                         f"to use the folder's")
    flat = load_file(str(path / TENSORS))
    store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in manifest["weights"]:
        try:
            store[name] = (flat[f"{name}.qweight"], flat[f"{name}.scales"])
        except KeyError as e:
            raise ValueError(f"quantized={str(directory)!r}: {TENSORS} lacks {e}; the folder is damaged") from None
    saved.store = store
    if config is not None:
        saved.skip = config.skip or saved.skip
    return saved
