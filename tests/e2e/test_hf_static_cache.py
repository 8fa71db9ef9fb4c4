"""Hugging Face's own cache recipes through ``torch.compile(m.forward, backend="membound")``: the static cache
(``cache_implementation="static"``: the cache tensors are state, written in place, bound per call) and the
default dynamic cache. Greedy tokens equal eager ``generate``; every forward runs membound's graphs."""

from __future__ import annotations

import pytest
import torch

import membound.dynamo_backend as dynamo_backend

from .hf_models import VOCAB, _common

pytest.importorskip("transformers")


def _one_layer_llama() -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(**{**_common(), "num_hidden_layers": 1})).eval()
    model.generation_config.eos_token_id = None   # decode all the tokens asked for
    return model


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Graphs compiled by the membound backend and calls of their executables."""
    counts = {"graphs": 0, "runs": 0}
    compile_graph_with = dynamo_backend.compile_graph_with

    def spy(*args, **kwargs):
        compiled = compile_graph_with(*args, **kwargs)
        exe = compiled.executable

        def run(*a):
            counts["runs"] += 1
            return exe(*a)

        counts["graphs"] += 1
        compiled.executable = run
        return compiled

    monkeypatch.setattr(dynamo_backend, "compile_graph_with", spy)
    return counts


@pytest.mark.parametrize("cache", ["static", None])
def test_hf_generate_with_a_compiled_forward_equals_eager(cache, counted) -> None:
    torch._dynamo.reset()
    model = _one_layer_llama()
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 7))
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=5, do_sample=False, cache_implementation=cache)
        model.forward = torch.compile(model.forward, backend="membound")
        for call in range(2 if cache else 1):   # the second call brings a fresh StaticCache
            got = model.generate(ids, max_new_tokens=5, do_sample=False, cache_implementation=cache)
            assert torch.equal(got, want), f"call {call}: {got[:, 7:].tolist()} vs eager {want[:, 7:].tolist()}"
    assert counted["runs"] == (2 if cache else 1) * 5   # a prefill and four decode steps per call, all membound
    if cache == "static":
        assert counted["graphs"] == 2      # prefill and decode, reused by the second call's new StaticCache


def test_writes_through_a_no_op_alias_of_a_buffer_become_state() -> None:
    class Counter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("n", torch.zeros((), dtype=torch.long))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = self.n.to(x.device)   # a no-op alias, as HF's StaticCache length
            n.add_(x.shape[0])        # in place, through the alias
            return x * self.n

    torch._dynamo.reset()
    eager, model = Counter(), Counter()
    compiled = torch.compile(model, backend="membound")
    for rows in (3, 3, 3):
        x = torch.randn(rows, 4)
        torch.testing.assert_close(compiled(x), eager(x))
    assert int(model.n) == int(eager.n) == 9


@pytest.mark.gpu
def test_hf_static_cache_recipe_on_cuda_through_triton(counted) -> None:
    torch._dynamo.reset()
    model = _one_layer_llama().to("cuda")   # fp32: greedy tokens comparable with eager
    ids = torch.randint(3, VOCAB, (2, 7), device="cuda")
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=5, do_sample=False, cache_implementation="static")
        model.forward = torch.compile(model.forward, backend="membound")   # auto: the Triton backend on CUDA
        for _ in range(2):
            got = model.generate(ids, max_new_tokens=5, do_sample=False, cache_implementation="static")
            assert torch.equal(got, want), f"{got[:, 7:].tolist()} vs eager {want[:, 7:].tolist()}"
    assert counted["runs"] == 10 and counted["graphs"] == 2


def test_a_move_to_another_device_is_a_copy_not_an_alias_of_the_buffer() -> None:
    """HF's StaticCache does ``self.cumulative_length = self.cumulative_length.to(device)`` in its first
    compiled forward, then ``add_`` on the copy: on CUDA that copy is a new tensor, so the add must not
    become a write into the CPU buffer (it did, and Triton then failed on a CPU pointer)."""
    from membound.frontends.translate import _moves_device

    g = torch.fx.Graph()
    buf = g.placeholder("n")
    same, other = g.call_method("to", (buf,)), g.call_method("to", (buf,))
    buf.meta["val"] = torch.zeros((), dtype=torch.long)
    same.meta["val"] = torch.zeros((), dtype=torch.long)
    other.meta["val"] = torch.empty((), dtype=torch.long, device="meta")
    assert not _moves_device(buf, same)
    assert _moves_device(buf, other)


@pytest.mark.gpu
def test_cpu_tensors_of_a_cuda_call_are_moved_if_scalars_and_named_otherwise() -> None:
    from membound.dynamo_backend import _one_device

    x = torch.randn(3, device="cuda")
    tensors = {"len": torch.tensor(4), "w": torch.randn(2, device="cuda")}
    got = _one_device([x, torch.tensor(2.0)], tensors, set(), "g")
    assert got[0] is x and got[1].device.type == "cuda" and tensors["len"].device.type == "cuda"
    with pytest.raises(RuntimeError, match="'len'.*buffer it writes"):
        _one_device([x], {"len": torch.tensor(4)}, {"len"}, "g")
    with pytest.raises(RuntimeError, match=r"input 1 is a \(5,\) tensor on cpu"):
        _one_device([x, torch.randn(5)], {}, set(), "g")
    assert _one_device([torch.randn(2)], {}, set(), "g")[0].device.type == "cpu"   # no CUDA: left alone
