"""Argument checks for the public entry points (``generate``, ``compile``, ``explain``).

Every check runs where the argument enters, before any capture or allocation, on every path
(``kv_cache=False`` too), and raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right
kind, outside the allowed range) with one sentence naming the argument, the value given and what is
allowed:

    generate: temperature must be a finite number >= 0 (0 = greedy), got nan

Checks return the value normalised (``eos_token_id`` as a list of ints, ``hardware`` as a
``Hardware``) so callers use what was checked.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch


def _bad(fn: str, name: str, value: Any, allowed: str, kind: type = ValueError) -> Exception:
    shown = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
    return kind(f"{fn}: {name} must be {allowed}, got {shown}")


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_int(fn: str, name: str, value: Any, minimum: int, optional: bool = False) -> Optional[int]:
    """``value`` as an int >= ``minimum`` (or None when ``optional``)."""
    if value is None and optional:
        return None
    allowed = f"an int >= {minimum}" + (" or None" if optional else "")
    if not _is_int(value):
        raise _bad(fn, name, value, allowed, TypeError)
    if value < minimum:
        raise _bad(fn, name, value, allowed)
    return int(value)


# ---- generate -------------------------------------------------------------------------------
def check_token_tensor(fn: str, name: str, ids: Any) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise _bad(fn, name, ids, "a tensor of token ids [batch, seq]", TypeError)
    if ids.dim() != 2:
        raise _bad(fn, name, ids, "a 2-d tensor [batch, seq]")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"{fn}: {name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise _bad(fn, name, ids, "non-empty: at least one row (batch >= 1) of at least one token (seq >= 1)")
    return ids


def check_generate(input_ids: Any, max_new_tokens: Any, *, attention_mask: Any = None, temperature: Any = 0.0,
                   top_k: Any = None, top_p: Any = None, eos_token_id: Any = None, pad_token_id: Any = None,
                   max_cache_len: Any = None, stream: Any = None, generator: Any = None,
                   kv_cache: Any = True) -> dict[str, Any]:
    """Check every argument of ``membound.generate``; returns the normalised keyword values."""
    fn = "generate"
    check_token_tensor(fn, "input_ids", input_ids)
    check_int(fn, "max_new_tokens", max_new_tokens, 0)
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise _bad(fn, "attention_mask", attention_mask, "None or a tensor shaped like input_ids", TypeError)
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"{fn}: attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        if attention_mask.dtype.is_floating_point and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError(f"{fn}: attention_mask must hold only 0 and 1 (1 = a real token)")
    if not _is_real(temperature) or math.isnan(temperature) or math.isinf(temperature) or temperature < 0:
        raise _bad(fn, "temperature", temperature, "a finite number >= 0 (0 = greedy)",
                   ValueError if _is_real(temperature) else TypeError)
    if top_k is not None:
        if not _is_int(top_k):
            raise _bad(fn, "top_k", top_k, "None or an int >= 1 (keep the k most likely tokens)", TypeError)
        if top_k < 1:
            raise _bad(fn, "top_k", top_k, "None or an int >= 1 (keep the k most likely tokens)")
    if top_p is not None:
        if not _is_real(top_p):
            raise _bad(fn, "top_p", top_p, "None or a number in (0, 1]", TypeError)
        if math.isnan(top_p) or not 0.0 < top_p <= 1.0:
            raise _bad(fn, "top_p", top_p, "None or a number in (0, 1]")
    eos = check_eos(fn, eos_token_id)
    check_int(fn, "pad_token_id", pad_token_id, 0, optional=True)
    check_int(fn, "max_cache_len", max_cache_len, 1, optional=True)
    if stream is not None and not callable(stream):
        raise _bad(fn, "stream", stream, "None or a callable taking the new tokens [batch]", TypeError)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise _bad(fn, "generator", generator, "None or a torch.Generator", TypeError)
    if not isinstance(kv_cache, bool):
        raise _bad(fn, "kv_cache", kv_cache, "True or False", TypeError)
    return {"eos_token_id": eos}


def check_eos(fn: str, eos: Any) -> Optional[list[int]]:
    """``eos_token_id`` as None or a list of ints >= 0 (an int, a list/tuple/set of ints)."""
    allowed = "None, an int token id or a list of int token ids"
    if eos is None:
        return None
    if isinstance(eos, torch.Tensor) or not (_is_int(eos) or isinstance(eos, (list, tuple, set, frozenset))):
        raise _bad(fn, "eos_token_id", eos, allowed, TypeError)
    ids = [eos] if _is_int(eos) else list(eos)
    for i in ids:
        if not _is_int(i):
            raise _bad(fn, "eos_token_id", eos, allowed, TypeError)
        if i < 0:
            raise _bad(fn, "eos_token_id", eos, allowed + " (>= 0)")
    return [int(i) for i in ids]


# ---- compile --------------------------------------------------------------------------------
def check_dump_dir(path: Union[str, os.PathLike[str]], source: str) -> Path:
    """Create the IR dump folder now, so an unusable one fails once, here, naming the path."""
    try:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission on {folder}")
    except (OSError, TypeError, ValueError) as e:
        raise ValueError(f"compile: {source} = {str(path)!r} must be a folder membound can create and write the IR "
                         f"dumps into: {type(e).__name__}: {e}. Pass another folder, or unset it to dump nothing"
                         ) from None
    return folder


def check_compile(*, dynamic: Any, cuda_graphs: Any, fallback: Any, pipeline: Any) -> None:
    fn = "compile"
    if not isinstance(dynamic, bool):
        raise _bad(fn, "dynamic", dynamic, "True or False", TypeError)
    if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
        raise _bad(fn, "cuda_graphs", cuda_graphs, "None (auto), True or False", TypeError)
    if fallback not in (None, "torch"):
        raise _bad(fn, "fallback", fallback, "None or 'torch'")
    if pipeline is not None:
        if isinstance(pipeline, (str, bytes)) or not hasattr(pipeline, "__iter__"):
            raise _bad(fn, "pipeline", pipeline, "None or a list of pass names and pass callables", TypeError)
        for p in pipeline:
            if not (isinstance(p, str) or callable(p)):
                raise _bad(fn, "pipeline entry", p, "a registered pass name or a callable (graph, ctx) -> bool",
                           TypeError)


# ---- explain --------------------------------------------------------------------------------
def check_explain(*, batch: Any, seq_len: Any, cache_len: Any, dims: Any, max_rows: Any) -> None:
    fn = "explain"
    check_int(fn, "batch", batch, 1)
    check_int(fn, "seq_len", seq_len, 1)
    check_int(fn, "cache_len", cache_len, 1, optional=True)
    check_int(fn, "max_rows", max_rows, 1, optional=True)
    if dims is not None:
        if not isinstance(dims, dict):
            raise _bad(fn, "dims", dims, "None or a dict {symbol name: int >= 1}", TypeError)
        for k, v in dims.items():
            check_int(fn, f"dims[{k!r}]", v, 1)


def resolve_hardware(hardware: Any) -> Any:
    """``explain(hardware=)``: None, a ``Hardware``, or a known spec name (case-insensitive; a unique
    prefix such as ``"h100"`` names ``"h100-sxm"``)."""
    from membound.cost.hardware import SPECS, Hardware

    if hardware is None or isinstance(hardware, Hardware):
        return hardware
    known = list(SPECS) + ["cpu"]
    allowed = f"None, a membound.cost.Hardware or one of {', '.join(known)} (case-insensitive)"
    if not isinstance(hardware, str):
        raise _bad("explain", "hardware", hardware, allowed, TypeError)
    key = hardware.strip().lower().replace("_", "-").replace(" ", "-")
    if key in known:
        return Hardware.named(key)
    matches = [k for k in known if k.startswith(key)] if key else []
    if len(matches) == 1:
        return Hardware.named(matches[0])
    raise _bad("explain", "hardware", hardware, allowed)
