"""What an input-independent attention mask is: causal, causal with a sliding window, or unknown.

An additive mask may also hold ALiBi (Bloom, Falcon, MPT): on head h its visible entries are
``m_h * j`` (or ``m_h * (j - i)``) and the form carries the slopes ``m_h``.

Models build their masks from ``arange(S)`` and comparisons (Hugging Face: ``kv <= q``, and for
sliding-window layers ``kv > q - window``, plus ``eq`` of packed-sequence ids). Such a mask depends
only on the sequence length, so its form can be read off by evaluating it. ``mask_form`` evaluates the
mask's backward slice with the reference ops and accepts only the band ``0 <= i - j < W`` (W = None:
the full lower triangle) at every size it tries.

Evaluation at a few sizes is a proof only if the sizes go past every point where the mask can change
shape. The mask is built from positions compared with each other and with the integer constants of
its slice, so the sizes tried are small ones (1, 2, 3, 5, 8, 9) plus ``c - 1 .. c + 2`` for every
integer constant ``c`` of the slice (``c .. c + 2`` past 64: a band of width up to ``c + 1`` shows at
``c + 2``) (and every dim of a stored tensor it reads, such as GPT-2's causal
``bias`` buffer); a size the slice cannot be evaluated at (a stored mask
sliced past its end) is skipped, as the model cannot run at it either. A float mask cast to a narrower float
(fuse-attention's cast of an f32 additive mask to half-precision q) is read before that cast: an ALiBi bias keeps
its exact slopes, and every value under -1e4 is masked in either dtype. A constant above ``MAX_PROVABLE`` (the
evaluation would build a ``[c, c]`` matrix) is not evaluated: the mask stays unproven, and callers
refuse rather than guess. The band width must be the same at every size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from membound.ir import Graph, Value, get_op, print_graph
from membound.ir.types import B, S, concretize, eval_dim
from membound.passes.manager import PassContext

MAX_PROVABLE = 8194  # the largest size a mask is evaluated at ([S, S] bools: 67 MB; Llama 4 chunks of 8192 + 2)
_SMALL_SIZES = (1, 2, 3, 5, 8)


@dataclass(frozen=True)
class MaskForm:
    """A proven mask: causal (key j visible from query i iff j <= i), and ``i - j < window`` if set, or
    ``i // chunk == j // chunk`` if ``chunk`` is set (Llama 4's chunked attention: a query sees the keys of its
    own chunk of ``chunk`` positions, up to itself); an
    additive mask may also carry ALiBi: ``alibi[h] * j`` plus a constant per row, on head h (dim -3 of
    the mask; one slope when that dim broadcasts)."""

    window: Optional[int] = None
    alibi: Optional[tuple[float, ...]] = None
    chunk: Optional[int] = None


def backward_slice(g: Graph, outputs: list[Value]) -> Graph:
    """A copy of ``g`` computing only ``outputs`` (the nodes they depend on)."""
    from membound.passes.dce import dead_code_elimination

    c = g.copy()
    names = {v.name for v in outputs}
    c.outputs = [v for v in c.values() if v.name in names]
    dead_code_elimination(c, PassContext())
    return c


def depends_on_inputs(g: Graph) -> set[int]:
    """ids of the nodes whose value depends on a graph input (the data path)."""
    data: set[int] = set()
    for n in g.nodes:
        if any(v.kind == "input" or (v.producer is not None and id(v.producer) in data) for v in n.inputs):
            data.add(id(n))
    return data


def _integer_constants(g: Graph) -> list[int]:
    """Constants a position could be compared with: integer ones, and integral floats below the
    magnitude of a mask fill value (``-1e4``, ``finfo.min``: the values that mean "masked")."""
    out = []
    for n in g.nodes:
        if n.op in ("constant", "full"):
            v = n.attrs.get("value")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            if isinstance(v, float) and (not v.is_integer() or abs(v) >= 1e4):
                continue
            out.append(abs(int(v)))
    for v in list(g.params) + list(g.state):  # a stored mask (GPT-2's ``bias`` buffer) sliced to [S, S]
        out += [int(d) for d in v.shape if d.is_Integer]
    return out


def _evaluate(sub: Graph, b: int, s: int) -> torch.Tensor:
    bind = {B: b, S: s}
    env: dict[int, Any] = {}
    for v in sub.inputs:
        env[id(v)] = torch.zeros([eval_dim(d, bind) for d in v.shape], dtype=v.dtype)
    for p in list(sub.params) + list(sub.state):
        env[id(p)] = sub.tensors[p.name].detach().cpu()
    for n in sub.nodes:
        if _narrowing_float_cast(n):
            # a float mask cast to half precision (fuse-attention casts an f32 additive mask to q's dtype): read in
            # its wider dtype, so an ALiBi bias keeps its exact slopes (rounding would hide them; masked stays
            # masked, since every value under -1e4 is masked in either dtype)
            env[id(n.results[0])] = env[id(n.inputs[0])]
            continue
        attrs = concretize(n.attrs, bind)
        res = get_op(n.op).reference(*[env[id(v)] for v in n.inputs], **attrs)
        for r, t in zip(n.results, res if len(n.results) > 1 else [res]):
            env[id(r)] = t
    return env[id(sub.outputs[0])]


def _narrowing_float_cast(n: Any) -> bool:
    src, dst = n.inputs[0].dtype if n.inputs else None, n.results[0].dtype
    return (n.op == "cast" and src is not None and src.is_floating_point and dst.is_floating_point
            and dst.itemsize < src.itemsize)


def _chunk_size(keep: torch.Tensor, s: int) -> Optional[int]:
    """C if ``keep`` (broadcast over its leading dims) is causal within chunks of C positions: ``j <= i`` and
    ``i // C == j // C``, with 1 < C < s (else None)."""
    first = keep.reshape(-1, s, s)[0]
    below = first.diagonal(-1)  # keep[i, i - 1], i = 1 .. s-1: false first at i = C, where a new chunk starts
    starts = (~below).nonzero()
    if starts.numel() == 0:
        return None
    c = int(starts[0]) + 1
    if c < 2:
        return None
    i = torch.arange(s)
    chunked = (i[None, :] <= i[:, None]) & (i[None, :] // c == i[:, None] // c)
    return c if torch.equal(keep, chunked.expand_as(keep)) else None


def _band_width(keep: torch.Tensor, s: int) -> Optional[int]:
    """W if ``keep`` (broadcast over its leading dims) is ``0 <= i - j < W`` everywhere (W = s: the triangle)."""
    last_row = keep.reshape(-1, s, s)[0, s - 1]
    w = int(last_row.sum())  # the last query sees the most keys: its count is the band's width
    if w < 1:
        return None
    band = torch.ones(s, s, dtype=torch.bool).tril().triu(-(w - 1))  # 0 <= i - j < w
    if not torch.equal(keep, band.expand_as(keep)):
        return None
    return w


_MEMO: dict[str, Union[MaskForm, str]] = {}  # printed mask slice -> its form (a 4096 window takes seconds)
MAX_MEMO = 64


def mask_form(g: Graph, mask: Value) -> Union[MaskForm, str]:
    """The proven form of an input-independent mask, or a sentence saying why it is not proven.

    Results are remembered per printed backward slice (every layer shares one mask, and the
    forward and decode captures of a model build the same one)."""
    sub = backward_slice(g, [mask])
    key = print_graph(sub) + "".join(f"\n{p.name}:{_tensor_key(sub, p)}" for p in list(sub.params) + list(sub.state))
    form = _MEMO.get(key)
    if form is None:
        form = _prove(sub)
        if len(_MEMO) >= MAX_MEMO:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = form
    return form


def _tensor_key(g: Graph, v: Value) -> str:
    t = g.tensors.get(v.name)
    return "none" if t is None else f"{t.data_ptr()}:{t._version}"


def _prove(sub: Graph) -> Union[MaskForm, str]:
    constants = [c for c in _integer_constants(sub) if c > 1]
    too_big = [c for c in constants if c + 2 > MAX_PROVABLE]
    if too_big:
        return (f"the mask compares positions with the constant {max(too_big)}, past the largest size membound "
                f"evaluates masks at ({MAX_PROVABLE})")
    sizes = set(_SMALL_SIZES)
    sizes.add(max(_SMALL_SIZES) + 1)
    for c in constants:  # a band of width up to c + 1 shows at c + 2; c - 1 only where it is cheap
        sizes.update(x for x in ((c - 1, c, c + 1, c + 2) if c <= 64 else (c, c + 1, c + 2)) if x >= 1)
    widths: dict[int, int] = {}
    chunks: dict[int, int] = {}  # sizes where the mask is causal within chunks (and no band): the chunk size
    alibi: Optional[tuple[float, ...]] = None
    for s in sorted(sizes):
        for b in ((1, 2) if s <= 8 else (1,)):
            try:
                m = _evaluate(sub, b, s)
            except Exception as e:  # a mask we cannot evaluate is not proven
                if s > max(_SMALL_SIZES) and (sub.params or sub.state):
                    continue  # past the end of a stored mask
                return f"the mask could not be evaluated at S={s} ({type(e).__name__}: {e})"
            if m.dtype != torch.bool:
                slopes = _alibi_slopes(m, s)
                if isinstance(slopes, str):
                    return slopes
                if s > 1 and slopes is not None:
                    if alibi is not None and not _same_slopes(alibi, slopes):
                        return f"the additive mask's per-head slopes change with the length (at S={s})"
                    alibi = slopes
                m = m > -1e4
            if m.dim() < 2 or m.shape[-1] != s or m.shape[-2] != s:
                if s > max(_SMALL_SIZES) and (sub.params or sub.state) and m.dim() >= 2 \
                        and m.shape[-1] < s and m.shape[-2] < s:
                    continue  # past the end of a stored mask (minGPT's tril buffer[:, :, :S, :S] stops at its size)
                return f"the mask has shape {tuple(m.shape)} at S={s}, not [..., S, S]"
            w = _band_width(m, s)
            if w is None:
                c = _chunk_size(m, s)
                if c is None:
                    return (f"at S={s} the mask is neither a causal band 0 <= i - j < W nor causal within chunks "
                            f"(bidirectional, padded or strided)")
                chunks[s] = c
                continue
            widths[s] = w
    if chunks:
        # a chunk C shows as the full triangle up to S = C and as chunks of C past it (a band, never)
        chunk = min(chunks.values())
        if set(chunks.values()) != {chunk} or any(w != s or s > chunk for s, w in widths.items()):
            return (f"the mask's chunks change with the length (chunks of {sorted(set(chunks.values()))} at S="
                    f"{sorted(chunks)}, full triangles at S={sorted(s for s, w in widths.items() if w == s)})")
        if alibi is not None and any(alibi):
            return "the mask is chunked and carries ALiBi slopes (no kernel has both)"
        return MaskForm(chunk=chunk)
    # a window W shows as the full triangle up to S = W and as a band of width W past it
    narrower = [w for s, w in widths.items() if w < s]
    window = min(narrower) if narrower else None
    for s, w in widths.items():
        if w != (s if window is None else min(s, window)):
            return f"the mask's band width changes with the length (W={w} at S={s}, W={window} elsewhere)"
    if alibi is not None and not any(alibi):
        alibi = None
    return MaskForm(window=window, alibi=alibi)


def _alibi_slopes(m: torch.Tensor, s: int) -> Union[tuple[float, ...], None, str]:
    """The per-head slopes of an additive mask whose visible entries are ``slope_h * j + c(h, i)`` (0 and a
    large negative number: all slopes 0); None when ``s`` is too short to tell; a sentence when neither."""
    visible = m > -1e4
    if s < 2:
        return None
    x = m.float()
    heads = x.reshape(-1, *x.shape[-3:]) if x.dim() >= 3 else x.reshape(1, 1, s, s)  # [batch, H, S, S]
    # the slope from the last row's diagonal and its left neighbour (visible in every causal band of width >= 2)
    slopes = heads[:, :, s - 1, s - 1] - heads[:, :, s - 1, s - 2]  # [batch, H]
    if not bool(visible.reshape(heads.shape)[:, :, s - 1, s - 2].all()):
        return None  # a band of width 1: no two visible keys in a row
    if not torch.allclose(slopes, slopes[:1].expand_as(slopes), rtol=1e-5, atol=1e-6):
        return "the additive mask's slopes differ between batch rows"
    j = torch.arange(s, dtype=torch.float32)
    residual = heads - slopes[:, :, None, None] * j  # constant along each row where visible
    diag = residual.diagonal(dim1=-2, dim2=-1)[..., :, None]  # [batch, H, S, 1]
    vis = visible.reshape(heads.shape)
    tol = 1e-4 * (1.0 + heads.abs().where(vis, torch.zeros(())).amax())
    if not bool(((residual - diag).abs() <= tol).where(vis, torch.ones((), dtype=torch.bool)).all()):
        return "the additive mask has values other than 0, a large negative number and a per-head ALiBi slope"
    return tuple(float(x) for x in slopes[0])


def _same_slopes(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-5 * max(1.0, abs(x)) for x, y in zip(a, b))
