"""Differential model fuzzing in CI: a few fixed draws of ``membound.testing.model_fuzz`` (small random
models, left-padded prompts) through the reference and triton backends (``TRITON_INTERPRET=1``, fp32),
forward and greedy ``generate``, against eager. Tolerances and the near-tie rule for greedy tokens are
in that module's docstring. The long mode is ``benches/fuzz_models.py --minutes N``.
"""

from __future__ import annotations

import pytest
import torch
from _triton_interp import Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

import membound
from membound.testing import model_fuzz
from membound.testing.model_fuzz import draw_case, run_case

INTERP = Interpreted(__file__)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

# (family, seed): each draw is one layer and 2-3 new tokens; together they cover an HF Llama with GQA 2:1,
# attention and MLP biases, relu, head_dim 12 under a 32-wide hidden state and a left-padded row; an HF
# GPT-2 (eager attention, relu, tied embeddings) with a one-token row; membound's Llama with GQA 4:1
CASES = [("hf-llama", 109), ("hf-gpt2", 4), ("llama", 15),
         # the opt-in families (session 15's fixes): OPT's counted positions, GPT-J's gathered rotary rows, BLOOM's
         # flattened heads with ALiBi, a GPT-Neo local layer whose window (4) is shorter than a prompt (5); each
         # with left padding
         ("hf-opt", 2), ("hf-gptj", 1), ("hf-bloom", 4), ("hf-gptneo", 18),
         # session 16: XGLM (flattened heads, the mask floored at finfo.min, sinusoid rows by index_select), 12 heads;
         # CodeGen (f32 scores, the mask added before the scale), 4 heads, rows of 9 and 8
         ("hf-xglm", 3), ("hf-codegen", 2),
         # MPT: its ALiBi table sliced by max(0, 64 - S) (the capture takes S <= 64), then a boolean fill; 12 heads
         # (slopes by torch.concat), rows of 2, 5 and 4
         ("hf-mpt", 14),
         # gpt-oss: attention sinks on a sliding layer whose window (4) is shorter than a prompt (rows of 4 and 6), GQA 4:1,
         # q/k/v and o biases, 3 experts (top 2) with biases and the clamped SwiGLU
         ("hf-gpt-oss", 14),
         # session 19: DeepSeek-V2 (latent attention, its complex rotary captured as real arithmetic, 8 experts top-1
         # with a shared one), 6 heads, rows of 5, 3 and 7
         ("hf-deepseek-v2", 5),
         # session 20: Llama 4, a chunked RoPE layer (chunks of 2) against rows of 7, 1 and 8 (left padding), GQA 3:1,
         # 2 experts with a shared one, the router's sigmoid weight on the input
         ("hf-llama4", 27)]


@pytest.mark.parametrize("family,seed", CASES)
def test_fixed_draws_match_eager(family: str, seed: int, request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    case = draw_case(seed, families=(family,), max_layers=1, max_new_tokens=3)
    result = run_case(case)
    assert result.ok, f"{case.describe()}\n" + "\n".join(result.mismatches + [f"{k}: {v}" for k, v in
                                                                              result.errors.items()])
    assert result.tokens_compared >= len(case.lengths) * 2, result  # both backends compared real tokens


def test_draws_are_reproducible_and_varied() -> None:
    assert draw_case(7) == draw_case(7)
    cases = [draw_case(s) for s in range(200)]
    assert {c.family for c in cases} == set(model_fuzz.FAMILIES)
    assert any(len(set(c.lengths)) > 1 for c in cases)  # left padding happens
    assert any(c.config.get("num_key_value_heads", 0) < c.config.get("num_attention_heads", 0) for c in cases)
    ids, mask = model_fuzz.case_inputs(draw_case(3, families=("hf-llama",), max_layers=1))
    assert mask.sum(1).tolist() == [9, 9, 8] and (ids[mask.bool()] >= 3).all() and (ids[~mask.bool()] == 0).all()


def test_the_fuzzer_reports_wrong_logits_and_wrong_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks can fail: a "compiled" model that is eager plus 1e-3 on the logits, and a generate
    that returns eager's tokens plus one, are both reported (eager itself passes)."""
    case = draw_case(1, families=("gpt2",), max_layers=1, max_new_tokens=3)

    def fake_generate(model, ids, new, attention_mask=None):  # type: ignore[no-untyped-def]
        out = ids
        for _ in range(new):
            out = torch.cat([out, model(out)[:, -1:].argmax(-1)], dim=1)
        return out + shift  # every token (prompt too) moved by ``shift``

    monkeypatch.setattr(membound, "generate", fake_generate)
    shift, offset = 0, 0.0
    monkeypatch.setattr(membound, "compile", lambda m, **kw: (lambda ids, **k: m(ids, **k) + offset))
    assert run_case(case, backends=("eager",)).ok
    offset = 1e-3
    bad = run_case(case, backends=("eager",))
    assert [m.split(":")[0] for m in bad.mismatches] == ["forward[eager]"]
    offset, shift = 0.0, 1
    bad = run_case(case, backends=("eager",))
    assert bad.mismatches and bad.mismatches[0].startswith("generate[eager]: row 0 step 0"), bad.mismatches


def test_an_exception_is_reported_with_its_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    case = draw_case(1, families=("gpt2",), max_layers=1, max_new_tokens=1)

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyError("boom")

    monkeypatch.setattr(membound, "compile", broken)
    result = run_case(case, backends=("x",))
    assert list(result.errors) == ["forward[x]"] and result.errors["forward[x]"].startswith("KeyError: 'boom'")
    assert model_fuzz.summarize([result])["exception_types"] == {"forward[x] KeyError": 1}


def test_forced_splits_split_every_decode_launch_and_restore_the_heuristics() -> None:
    import importlib

    attention = importlib.import_module("membound.backends.triton.kernels.decode_attention")
    linear = importlib.import_module("membound.backends.triton.kernels.linear")
    before = (attention.pick_config, linear.pick_config)
    with model_fuzz.forced_splits():
        cfg = linear.pick_config(1, 24, 40, torch.float32, torch.device("cpu"))
        assert cfg.resident and cfg.block_k == 32 and cfg.split_k == 2  # K = 40 in two resident parts of 20
        cfg = linear.pick_config(3, 24, 40, torch.float32, torch.device("cpu"))
        assert cfg.block_k == 16 and cfg.split_k == 2  # K = 40 in three 16-wide tiles: two splits
        dec = attention.pick_config(2, 2, 45, True, 16, torch.float32, torch.device("cpu"))
        assert dec.chunk == 16 and -(-45 // dec.chunk) == 3
    assert (attention.pick_config, linear.pick_config) == before


def test_every_draw_builds() -> None:
    """Every drawn config is one its model class accepts (seed 2003 once drew an HF hidden size of 200 over
    12 heads, which transformers' config validation rejects): a failing draw would count as a fuzzer
    error, not a membound finding."""
    for seed in range(2000, 2060):
        case = draw_case(seed)
        model_fuzz.build_case_model(case)


def test_a_half_precision_difference_eager_shares_is_arbitrated_not_a_mismatch() -> None:
    """``_arbitrate``: eager in fp32 decides a half-precision forward difference. A compiled result near fp32 where
    eager's fp16 strays passes; one that strays further than eager's fp16 does not."""
    import torch.nn as nn

    from membound.testing.model_fuzz import _arbitrate

    class Logits(nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return ids.float()[..., None] * torch.ones(3)

    ids = torch.tensor([[1, 2, 3]])
    exact = Logits()(ids)  # the fp32 eager logits
    valid = torch.ones(1, 3, dtype=torch.bool)
    eager_half = exact.clone()
    eager_half[0, 1] += 1.5  # eager's half precision strays at one position
    fair, _ = _arbitrate(Logits(), ids, {}, exact + 0.01, eager_half, valid, 2e-2)
    assert fair
    unfair, excess = _arbitrate(Logits(), ids, {}, exact + 2.0, eager_half, valid, 2e-2)
    assert not unfair and excess > 0.4
