"""The decode step launches fewer kernels per layer (issue 13): a Llama layer's residual adds ride in the
o / down GEMVs' epilogues, which also write the sums of squares of the sum they store, and its RMSNorms
are formed by the GEMVs that read them from those statistics (fuse-linear-residual, fuse-norm-linear), so a
layer is 6 launches instead of 8:

    before: add+rms_norm, qkv linear, rope+cache write, attention, o linear, add+rms_norm, gate/up linear,
            gated down linear
    after:  rms_norm_linear_sumsq (qkv), rope+cache write, attention, linear_add_sumsq (o),
            rms_norm_linear_sumsq (gate/up), gated_linear_add_sumsq (down; the last layer's: gated_linear_add)

Counted on the decode partition the way ``membound.step_prediction`` counts launches (``kernel_works``),
over the second layer (from the first launch that reads a ``layers.1.`` weight to the last). The fused
step is built with ``MEMBOUND_DECODE_PIPELINE=decode-fused`` and, to keep the gated down projection these
kernels fuse, ``MEMBOUND_LINEAR_GLU=0`` (fuse-linear-glu, on by default, moves the gating into the gate/up
GEMV instead; the launch count with it is checked too). ``decode-fused-rope`` (fuse-rope-linear too) makes
the q/k/v GEMV ``rms_norm_linear_rope_sumsq``; the layer stays 6 launches, the rotation's launch (shared with the
k/v cache write) becoming a plain cache write. The tiny HF Llama's and membound's own
Llama's greedy ``generate`` on the Triton backend (CPU interpreter; fp32, and fp16 for membound's) must
equal eager recomputation.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

import membound
from membound.backends.triton.step_plan import kernel_works

INTERP = Interpreted(__file__)


@pytest.fixture(autouse=True)
def _gated_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMBOUND_LINEAR_GLU", "0")
SECOND_LAYER = re.compile(r"(^|\.)layers\.1\.")


def hf_llama(hidden: int = 48, intermediate: int = 80, layers: int = 2) -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=97, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                           eos_token_id=None)  # no row stops early: every token is compared
    return T.LlamaForCausalLM(config).eval()


def layer_launches(program: object) -> list[str]:
    """The names of the second layer's launches in the decode step."""
    part = program.decode.partition
    steps = [s for s in part.steps if getattr(s, "impl", None) != "view"]
    touches = [i for i, s in enumerate(steps)
               if any(SECOND_LAYER.search(v.name) for n in s.nodes for v in n.inputs if v.kind == "param")]
    assert touches, "no launch reads a layers.1. weight"
    layer = SimpleNamespace(steps=steps[touches[0]:touches[-1] + 1])
    return [w.name for w in kernel_works(layer, {"B": 1, "T": 16})]


def program(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, fused: bool, pipeline: str = "decode-fused"
            ) -> object:
    from membound.api import build_kv_program

    with monkeypatch.context() as m:
        if fused:  # off by default (passes/pipeline.py)
            m.setenv("MEMBOUND_DECODE_PIPELINE", pipeline)
        compiled = membound.compile(model, backend="triton")
        return build_kv_program(compiled, torch.zeros(1, 4, dtype=torch.long))


def test_a_layer_is_six_launches_instead_of_eight(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    model = hf_llama()
    before = layer_launches(program(model, monkeypatch, fused=False))
    after = layer_launches(program(model, monkeypatch, fused=True))
    assert len(before) == 8, before
    assert len(after) == 6, after
    ops = [name.split(" ")[0] for name in after]
    assert ops.count("rms_norm_linear_sumsq") == 2, after
    # the last layer's down projection feeds the final norm through the last position's gather: no statistics
    assert ops[3] == "linear_add_sumsq" and ops[-1] == "gated_linear_add", after
    assert not any("rms_norm" in name and name.startswith("_fused") for name in after), after
    # fuse-linear-glu on (the default): the gating in the gate/up GEMV, the down projection a plain linear with
    # the residual in its epilogue; the post-attention RMSNorm folds into the gate/up GEMV's prologue
    # (rms_norm_linear_glu_sumsq, from the o projection's partials): six still
    monkeypatch.setenv("MEMBOUND_LINEAR_GLU", "1")
    glu = [name.split(" ")[0] for name in layer_launches(program(model, monkeypatch, fused=True))]
    assert glu == ["rms_norm_linear_sumsq", glu[1], "cached_attention", "linear_add_sumsq",
                   "rms_norm_linear_glu_sumsq", "linear_add"], glu


def test_decode_fused_rope_moves_the_rotation_into_the_qkv_gemv(monkeypatch: pytest.MonkeyPatch) -> None:
    """decode-fused-rope: the q/k/v projection is one rms_norm_linear_rope_sumsq (its norm from the previous down
    projection's partials, q and k rotated in its epilogue). Still six launches, as decode-fused: there the rotation
    already shares its launch with the k/v cache write (one horizontal kernel), which stays a launch of its own, now
    a plain cache write. With fuse-linear-glu on, six too (the post-attention norm in the gate/up GEMV's
    prologue: rms_norm_linear_glu_sumsq)."""
    pytest.importorskip("transformers")
    model = hf_llama()
    after = layer_launches(program(model, monkeypatch, fused=True, pipeline="decode-fused-rope"))
    ops = [name.split(" ")[0] for name in after]
    assert len(after) == 6, after
    assert ops[0] == "rms_norm_linear_rope_sumsq" and "cache_write" in ops[1] and "neg" not in ops[1], after
    assert ops[2:] == ["cached_attention", "linear_add_sumsq", "rms_norm_linear_sumsq", "gated_linear_add"], after
    fused = layer_launches(program(model, monkeypatch, fused=True, pipeline="decode-fused"))
    assert len(fused) == 6 and "mul_neg_cat_add" in fused[1], fused  # the rotation rides with the cache write there
    monkeypatch.setenv("MEMBOUND_LINEAR_GLU", "1")
    glu = [name.split(" ")[0] for name in layer_launches(program(model, monkeypatch, fused=True,
                                                                 pipeline="decode-fused-rope"))]
    assert len(glu) == 6 and glu[0] == "rms_norm_linear_rope_sumsq" and "rms_norm_linear_glu_sumsq" in glu, glu


def _greedy_equals_eager(model: torch.nn.Module, ids: torch.Tensor, new: int, logits_of) -> set[str]:
    """``generate`` through the fused decode step gives eager's greedy tokens; returns the step's library ops."""
    model, ids = model.to(DEVICE), ids.to(DEVICE)  # the interpreter on CPU; on a GPU machine, CUDA
    compiled = membound.compile(model, backend="triton")
    with torch.no_grad():
        out = membound.generate(compiled, ids, new)
        seq = ids
        for _ in range(new):
            seq = torch.cat([seq, logits_of(model, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq), (out, seq)
    return {s.node.op for s in compiled.kv_program.decode.partition.steps if getattr(s, "node", None) is not None}


@pytest.mark.parametrize("pipeline,fused_ops", [
    ("decode-fused", {"rms_norm_linear_sumsq", "linear_add_sumsq", "gated_linear_add_sumsq"}),
    # the second layer's q/k/v GEMV norms x from the first layer's down projection's partials and rotates q, k
    ("decode-fused-rope", {"rms_norm_linear_rope_sumsq", "linear_rope", "linear_add_sumsq", "gated_linear_add_sumsq"}),
])
def test_hf_llama_greedy_generate_equals_eager(pipeline: str, fused_ops: set[str], request: pytest.FixtureRequest,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if not INTERP.runs_here(request):
        return
    pytest.importorskip("transformers")
    # two layers at hidden 32 (the interpreter's time is the GEMVs' programs, 4 output columns each): the
    # second layer's norms read the first's statistics (the down projection's into the next qkv)
    model = hf_llama(hidden=32, intermediate=44, layers=2)
    ids = torch.randint(3, 97, (2, 4), generator=torch.Generator().manual_seed(1))
    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", pipeline)   # off by default
    ops = _greedy_equals_eager(model, ids, 3, lambda m, seq: m(seq, use_cache=False).logits)
    assert fused_ops <= ops, ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_builtin_llama_greedy_generate_equals_eager(dtype: torch.dtype, request: pytest.FixtureRequest,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if not INTERP.runs_here(request):
        return
    from _small_models import small_llama

    model = small_llama(n_layers=2).to(dtype)
    ids = torch.randint(3, 97, (3, 4), generator=torch.Generator().manual_seed(2))  # batch 3: tensor cores
    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", "decode-fused")
    ops = _greedy_equals_eager(model, ids, 3, lambda m, seq: m(seq))
    assert {"rms_norm_linear_sumsq", "linear_add_sumsq", "gated_linear_add_sumsq"} <= ops, ops
