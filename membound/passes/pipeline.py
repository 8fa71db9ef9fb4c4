"""Pipelines are plain lists of passes (or registered pass names); these helpers compose them.

    pipeline = insert_after(default_pipeline(), "canonicalize", my_pass)
    PassManager(pipeline).run(graph)

The named pipelines, one per kind of graph the compile driver (``membound.driver``) builds:

* ``forward``: what ``membound.compile(model)`` and the ``torch.compile`` backend run on a captured
  forward: clean-ups, then the memory-bound rewrites (fuse-attention, fuse-moe, merge-linear,
  fuse-gated-linear, fuse-linear-glu), each asking the cost model whether it pays at the graph's dims.
* ``prefill``: the step graph ``generate`` builds: the forward clean-ups, fuse-attention, then
  insert-kv-cache (which needs the attention op and separate k/v projections) before the linear
  merges, and CSE again (what insert-kv-cache derives per layer from the positions, once).
* ``decode``: the prefill step specialised to ``S = 1``: clean-ups.
* ``decode-rope``: ``decode`` plus fuse-rope-linear (q and k rotated in the q/k/v projection's epilogue; an A/B
  setting, ``MEMBOUND_DECODE_PIPELINE=decode-rope``).
* ``decode-fused``: ``decode`` plus fuse-linear-residual and fuse-norm-linear (a Llama layer in 6
  launches instead of 8: the residual adds in the o / down GEMVs' epilogues, which also write the sums of
  squares the next norm needs; the norms in the GEMVs that read them). Off by default until a GPU A/B
  says it pays (see ``PIPELINES``); ``MEMBOUND_DECODE_PIPELINE=decode-fused`` runs it for ``generate``'s
  decode graph (:func:`decode_pipeline_name`).
* ``decode-fused-rope``: both: fuse-linear-residual, fuse-rope-linear, then fuse-norm-linear, which folds a norm
  read by the q/k/v ``linear_rope`` into ``rms_norm_linear_rope_sumsq`` (the norm from the previous down
  projection's partials in the prologue, q and k rotated in the epilogue). A Llama layer (after the first) is
  still 6 launches, with the gated down projection (``MEMBOUND_LINEAR_GLU=0``) or fuse-linear-glu's gate/up GEMV
  (its post-attention norm folded in: ``rms_norm_linear_glu_sumsq``), as in ``decode-fused``: there
  the rotation shares one horizontal kernel with the k/v cache write, which stays a launch (a plain copy now).
  What it saves is the rotation's work in that launch, not a launch. An A/B setting,
  ``MEMBOUND_DECODE_PIPELINE=decode-fused-rope``.
* ``decode-block``: fuse-rope-linear, then fuse-attention-block: each layer's attention block (norm, q/k/v with the
  rotation, the cache writes, attention, o projection and residual) one ``attention_block`` op, one launch at
  batch 1; then fuse-linear-residual (the MLP's residual add in the down projection): 4 launches a Llama
  layer. An A/B setting,
  ``MEMBOUND_DECODE_PIPELINE=decode-block``; slower than the default on the H200 (session 20).
* ``decode-layer``: ``decode-block`` plus fuse-mlp-block (the MLP's norm, gate/up and down with the residual one
  ``mlp_block`` op, one launch at batch 1): 2 launches a Llama layer. An A/B setting,
  ``MEMBOUND_DECODE_PIPELINE=decode-layer``; slower than the default on the H200 (session 20: 1.229 against 0.876
  ms a 1.24B step at batch 1).

``default_pipeline()`` is the forward pipeline.
"""

from __future__ import annotations

import os
from typing import Sequence

from membound.passes.manager import PassFn, PassLike, get_pass, pass_name

CLEANUP_PASSES = ("canonicalize", "constant-fold", "common-subexpression-elimination", "dead-code-elimination")
# what turns a cache-less forward into a cached step: after the user's (or the cleanup) passes
# (common-subexpression-elimination after insert-kv-cache: the per-layer copies of what it derives from the positions
# and last_index, a recurrence's live-token mask, become one)
KV_CACHE_PASSES = ("fuse-attention", "insert-kv-cache", "fuse-moe", "merge-linear", "fuse-gated-linear",
                   "fuse-linear-glu", "canonicalize", "common-subexpression-elimination", "dead-code-elimination")
# fuse-moe before merge-linear: merging would fold the router into a wider projection the pattern does not read
MEMORY_BOUND_PASSES = ("fuse-attention", "fuse-moe", "merge-linear", "fuse-gated-linear", "fuse-linear-glu",
                       "canonicalize", "dead-code-elimination")
# fuse-linear-glu after fuse-gated-linear (it rewrites gated_linear over a merged gate/up projection); quantization
# runs before it (driver.pipeline_for: QUANTIZE_BEFORE), so it never hides a linear from quantize-weights
# a linear's neighbours (residual add, RMSNorm) folded into its GEMV: decode only, where a launch saved is a
# visible share of the step. At prefill sizes the fused ops run the norm, cuBLAS and the add as separate
# kernels, one more launch than the generated add + norm kernel they replace.
LINEAR_FUSION_PASSES = ("fuse-linear-residual", "fuse-norm-linear")
# quantize-weights goes before the first of these: they make ops (linear_add, linear_glu, ...) it does not quantize
QUANTIZE_BEFORE = ("fuse-linear-glu", "fuse-rope-linear") + LINEAR_FUSION_PASSES

# Not in the default decode pipeline (yet). On an H200 (benches/results/decode_e2e-nvidia-h200-2026-12-02-fused.json)
# the first fused step, with the norm in every GEMV program's prologue (each re-reading and re-reducing x),
# was slower: Llama-3.2-1B shape 795 tok/s at batch 1 and 3035 at batch 8 against 901 and ~5060 unfused, 8B
# 178 against 206. fuse-norm-linear now takes the norm's statistics from the residual linear before it (the
# prologue form is off by default) and the fused ops' bytes count every program's re-reads. The two cost
# models disagree on whether that pays: the pass's roofline (H200 datasheet, 4 us a launch) fuses 31 of the
# 33 norms of the 1.24B step (not the first, of the embedding, nor the final one, behind a gather) and the
# 31 qkv norms of the 8B step after the first layer (not its gate/up norms: 7168 programs re-reading 4 KB of
# partials each); the
# calibrated step model (membound.step_prediction, a launch in a PDL graph costs little more than its work)
# predicts the fused step at 1.089 ms against 1.084 unfused (1.24B, b1), 4.897 against 4.882 (8B, b1).
# gpu/norm_stats.sh measures it; the default changes when that A/B says it pays.
PIPELINES: dict[str, tuple[str, ...]] = {
    "forward": CLEANUP_PASSES + MEMORY_BOUND_PASSES,
    "prefill": CLEANUP_PASSES + KV_CACHE_PASSES,
    "decode": ("canonicalize", "dead-code-elimination"),
    "decode-fused": ("canonicalize", *LINEAR_FUSION_PASSES, "dead-code-elimination"),
    # decode plus fuse-rope-linear (q and k rotated in the q/k/v projection's epilogue; the k/v cache write the
    # rotation's kernel carried stays a launch). An A/B setting (MEMBOUND_DECODE_PIPELINE=decode-rope): on the H200
    # (decode_e2e-nvidia-h200-2026-12-03-session12-swap) 1.24B b1 0.873 vs 0.900 ms, but 8B b1 4.274 vs 4.161, b8
    # equal; it pays where the cache write also leaves the chain
    "decode-rope": ("canonicalize", "fuse-rope-linear", "dead-code-elimination"),
    # both (an A/B setting, MEMBOUND_DECODE_PIPELINE=decode-fused-rope): fuse-rope-linear first, so fuse-norm-linear
    # sees the q/k/v projection as linear_rope and folds its norm into rms_norm_linear_rope_sumsq
    "decode-fused-rope": ("canonicalize", "fuse-linear-residual", "fuse-rope-linear", "fuse-norm-linear",
                          "dead-code-elimination"),
    # each layer's attention block as one attention_block op (one launch at batch 1, kernels/attn_block.py), the
    # MLP's residual add in the down projection's epilogue (fuse-linear-residual: the add no longer shares a kernel
    # with the next layer's norm, which the block forms): 4 launches a Llama layer (67 a 1.24B step against 131). An
    # A/B setting (MEMBOUND_DECODE_PIPELINE=decode-block): per layer at the 1.24B shape
    # benches/experiments/attn_block.py timed 52.6 us (48.3 on a persistent grid) against the library chain's 46.5
    # (session 20, H200): off
    "decode-block": ("canonicalize", "fuse-rope-linear", "fuse-attention-block", "fuse-linear-residual",
                     "dead-code-elimination"),
    # decode-block plus fuse-mlp-block: each layer's MLP (its norm, gate/up with the gating, down with the residual)
    # as one mlp_block op too (kernels/mlp_block.py): 2 launches a Llama layer (35 a 1.24B step). An A/B setting
    # (MEMBOUND_DECODE_PIPELINE=decode-layer), measured slower (session 20, H200, Triton 3.6:
    # decode-layer's step 1.229 ms against the default's 0.876 at 1.24B batch 1, 7.33 against 3.93 at 8B): off
    "decode-layer": ("canonicalize", "fuse-rope-linear", "fuse-attention-block", "fuse-linear-residual",
                     "fuse-mlp-block", "dead-code-elimination"),
}
DEFAULT_PASSES = PIPELINES["forward"]


DECODE_PIPELINE_ENV = "MEMBOUND_DECODE_PIPELINE"


def decode_pipeline_name() -> str:
    """The pipeline ``generate``'s decode graph runs: ``decode``, or the one ``MEMBOUND_DECODE_PIPELINE``
    names (e.g. ``decode-fused``, for an A/B run without changing the default)."""
    name = os.environ.get(DECODE_PIPELINE_ENV, "").strip() or "decode"
    if name not in PIPELINES:
        raise KeyError(f"{DECODE_PIPELINE_ENV}={name!r} names no pipeline; the named pipelines are "
                       f"{', '.join(PIPELINES)}")
    return name


def named_pipeline(name: str) -> list[PassFn]:
    """A fresh list of the passes of the pipeline called ``name`` (``forward``, ``prefill``, ``decode``)."""
    if name not in PIPELINES:
        raise KeyError(f"no pipeline named {name!r}; the named pipelines are {', '.join(PIPELINES)}")
    return [get_pass(p) for p in PIPELINES[name]]


def default_pipeline() -> list[PassFn]:
    """A fresh list of the passes ``membound.compile`` runs (the forward pipeline), in order (safe to edit)."""
    return named_pipeline("forward")


def _position(pipeline: Sequence[PassLike], name: str) -> int:
    names = [pass_name(p) for p in pipeline]
    if name not in names:
        raise KeyError(f"no pass named {name!r} in the pipeline {names}")
    return names.index(name)


def insert_before(pipeline: Sequence[PassLike], name: str, p: PassLike) -> list[PassLike]:
    """A new list with ``p`` just before the first pass called ``name``."""
    out = list(pipeline)
    out.insert(_position(out, name), p)
    return out


def insert_after(pipeline: Sequence[PassLike], name: str, p: PassLike) -> list[PassLike]:
    """A new list with ``p`` just after the first pass called ``name``."""
    out = list(pipeline)
    out.insert(_position(out, name) + 1, p)
    return out


def without(pipeline: Sequence[PassLike], name: str) -> list[PassLike]:
    """A new list without the passes called ``name``."""
    _position(pipeline, name)
    return [p for p in pipeline if pass_name(p) != name]
