"""Model-level Triton decoding through the split launches: flash-decoding over several chunks of the
cache (partials merged by the combine step) and split-K GEMVs (fp32 partials, last-arriving program
sums them). The configs are forced by wrapping each kernel's ``pick_config`` (a CPU run would
otherwise pick one split); greedy tokens must equal eager greedy decoding, token for token.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
from _small_models import VOCAB, small_llama
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

import membound

INTERP = Interpreted(__file__)
# the modules (the package exports functions of the same names)
decode_attention = importlib.import_module("membound.backends.triton.kernels.decode_attention")
linear = importlib.import_module("membound.backends.triton.kernels.linear")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def test_generate_with_forced_splits_equals_reference(monkeypatch: pytest.MonkeyPatch,
                                                      request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    seen = {"decode_chunks": 0, "split_k": 0}
    pick_decode, pick_linear = decode_attention.pick_config, linear.pick_config

    def decode_cfg(rows, groups, length, known_length, head_dim, dtype, device):  # type: ignore[no-untyped-def]
        cfg = pick_decode(rows, groups, length, known_length, head_dim, dtype, device)
        cfg = dataclasses.replace(cfg, block_t=16, chunk=16)  # one 16-slot chunk per program: many splits
        seen["decode_chunks"] = max(seen["decode_chunks"], -(-length // 16))
        return cfg

    def linear_cfg(m, n, k, dtype, device, glu=False):  # type: ignore[no-untyped-def]
        cfg = pick_linear(m, n, k, dtype, device, glu=glu)
        # two splits of one K tile each: the kernel drops empty splits, so the tile must not cover K alone
        # (the CPU config's tile is next_pow2(K), which would leave one split)
        block_k = max(16, 1 << (-(-k // 2) - 1).bit_length())
        assert -(-k // block_k) == 2, (k, block_k)
        seen["split_k"] = max(seen["split_k"], 2)
        return dataclasses.replace(cfg, block_k=block_k, split_k=2)

    monkeypatch.setattr(decode_attention, "pick_config", decode_cfg)
    monkeypatch.setattr(linear, "pick_config", linear_cfg)
    model = small_llama(n_layers=1).to(DEVICE)  # every launch of a layer splits: one layer shows them all
    ids = torch.randint(3, VOCAB, (2, 18), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    tri = membound.compile(model, backend="triton", cuda_graphs=False)
    with torch.no_grad():
        got = membound.generate(tri, ids, 3)
        want = ids
        for _ in range(3):  # greedy decoding by full recomputation, in eager
            want = torch.cat([want, model(want)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert seen["decode_chunks"] >= 2 and seen["split_k"] >= 2, seen  # the split launches ran
    assert torch.equal(got, want), f"triton {got[:, 18:].tolist()} vs eager {want[:, 18:].tolist()}"
