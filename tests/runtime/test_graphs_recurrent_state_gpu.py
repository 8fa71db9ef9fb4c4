"""CUDA graphs and a recurrence's state, read and written in place by every decode step: capturing a graph runs the
step before capturing it (warm-ups), which advanced the state as many tokens; the capture restores it (``preserve``).
Session 27 found it on an H100: Kimi Linear decoded other greedy tokens with graphs than without (benches/hf_families
on cuda), and every recurrent hybrid's first decode step read a state two tokens ahead."""

import sys
from pathlib import Path

import pytest
import torch

import membound

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.gpu
def test_a_capture_leaves_the_preserved_tensors_as_they_were() -> None:
    from membound.backends.cuda_graphs import CapturedGraph

    state = torch.arange(6, dtype=torch.float32, device="cuda")
    x = torch.ones(6, device="cuda")

    def step(inputs):  # not idempotent: the state doubles and takes the input, in place
        state.mul_(2).add_(inputs[0])
        return [state * 1]

    graph = CapturedGraph(step, [x], warmup=2, preserve=[state])
    assert torch.equal(state, torch.arange(6, dtype=torch.float32, device="cuda"))   # the warm-ups undone
    (out,) = graph([x])
    want = torch.arange(6, dtype=torch.float32, device="cuda") * 2 + 1                  # one step, not three
    assert torch.equal(out, want) and torch.equal(state, want)
    (out,) = graph([x * 3])
    assert torch.equal(out, want * 2 + 3)


def _hf_families():
    sys.path.insert(0, str(ROOT / "benches"))
    try:
        import hf_families
    finally:
        sys.path.remove(str(ROOT / "benches"))
    return hf_families


# one family per kind of state: linear_scan (Mamba), Mamba-2's SSD, the gated delta rule (Qwen3.5), KDA's decay per
# key (Kimi Linear), RG-LRU beside local attention (RecurrentGemma), a short convolution only (LFM2)
@pytest.mark.gpu
@pytest.mark.parametrize("family", ["mamba", "mamba2", "qwen3.5", "kimi-linear", "recurrent-gemma", "lfm2"])
def test_graph_decode_of_a_recurrent_model_equals_the_non_graph_path(family: str) -> None:
    """The same kernels with and without graphs, fp32, three rows of other prompt lengths (left padding): every
    greedy token equal."""
    import transformers

    H = _hf_families()
    if not hasattr(transformers, H.FAMILIES[family][0]):
        pytest.skip(f"transformers {transformers.__version__} has no {H.FAMILIES[family][0]}")
    model = H.build(family).cuda()
    gen = torch.Generator().manual_seed(5)
    lengths = (9, 4, 6)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, max(lengths) - n:] = torch.randint(2, H.VOCAB, (n,), generator=gen)
        mask[i, max(lengths) - n:] = 1
    ids, mask = ids.cuda(), mask.cuda()
    graphs = membound.compile(model, backend="triton", cuda_graphs=True)
    plain = membound.compile(model, backend="triton", cuda_graphs=False)
    with torch.no_grad():
        want = membound.generate(plain, ids, 12, attention_mask=mask)
        got = membound.generate(graphs, ids, 12, attention_mask=mask)
        assert graphs._kv_program._runner is not None and graphs._kv_program._runner.graphs   # graphs were used
        assert torch.equal(got, want), (got[:, ids.shape[1]:].tolist(), want[:, ids.shape[1]:].tolist())
        # a second call replays the graph captured by the first: no capture, the states reset by the prefill
        assert torch.equal(membound.generate(graphs, ids, 12, attention_mask=mask), want)
