"""The blog-level arithmetic, computed from the IR of a real Hugging Face Llama-2-7B (meta device: no memory).

Decode at batch 1 is memory-bound and moves every weight once plus the KV cache; the cache holds
2 * layers * kv_heads * head_dim * bytes per token; only a large batch turns the step compute-bound.
"""

from __future__ import annotations

import pytest
import torch

from membound.cost import Hardware, Phases, RooflineCost, analyze
from membound.frontends import capture_export
from membound.ir.graph import Graph

transformers = pytest.importorskip("transformers")

A100 = Hardware.named("a100-80gb")
LAYERS, HIDDEN, HEADS, HEAD_DIM, VOCAB = 32, 4096, 32, 128, 32000


def capture_llama7b(kv_heads: int, layers: int) -> Graph:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=11008,
                                      num_hidden_layers=layers, num_attention_heads=HEADS,
                                      num_key_value_heads=kv_heads)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).to(torch.float16).eval()
    ids = torch.randint(0, VOCAB, (2, 16), device="meta")
    return capture_export(model, (), {"input_ids": ids, "use_cache": False}).graph


@pytest.fixture(scope="module")
def llama7b() -> tuple[Graph, Phases]:
    graph = capture_llama7b(kv_heads=HEADS, layers=LAYERS)
    return graph, analyze(graph, RooflineCost(A100))


def weight_bytes(graph: Graph) -> int:
    return sum(int(p.type.nbytes()) for p in graph.params)


def test_the_capture_is_the_7b_model(llama7b: tuple[Graph, Phases]) -> None:
    graph, _ = llama7b
    assert graph.count("attention") == LAYERS
    assert 6.7e9 < weight_bytes(graph) / 2 < 6.8e9  # 6.74B parameters in fp16


def test_kv_cache_bytes_per_token_is_two_layers_heads_head_dim_bytes(llama7b: tuple[Graph, Phases]) -> None:
    _, phases = llama7b
    assert phases.kv_bytes_per_token == 2 * LAYERS * HEADS * HEAD_DIM * 2  # 512 KiB per token


def test_gqa_kv_cache_counts_kv_heads() -> None:
    layers, kv_heads = 3, 8  # fewer layers keep the capture fast; the formula scales with them
    graph = capture_llama7b(kv_heads=kv_heads, layers=layers)
    assert analyze(graph, RooflineCost(A100)).kv_bytes_per_token == 2 * layers * kv_heads * HEAD_DIM * 2


@pytest.mark.parametrize("cache_len", [1, 4096])
def test_decode_at_batch_1_is_memory_bound_and_reads_every_weight_once(llama7b: tuple[Graph, Phases],
                                                                       cache_len: int) -> None:
    graph, phases = llama7b
    step = phases.decode.at({"B": 1, "T": cache_len})
    assert step["bound"] == "memory"
    assert step["compute_s"] < step["memory_s"] / 50  # far from the ridge: intensity ~1 FLOP/byte
    # every weight once, except the embedding table of which one row is gathered; plus the cache
    embedding = VOCAB * HIDDEN * 2
    floor = weight_bytes(graph) - embedding + phases.kv_bytes_per_token * cache_len
    assert floor < step["bytes"] < 1.01 * floor
    # 2 FLOPs per parameter (one multiply-add) plus attention over the cache: 4 * layers * heads * T * head_dim
    attention = 4 * LAYERS * HEADS * cache_len * HEAD_DIM
    assert step["flops"] == pytest.approx(2 * (weight_bytes(graph) - embedding) / 2 + attention, rel=0.01)


def test_decode_turns_compute_bound_only_at_a_large_batch(llama7b: tuple[Graph, Phases]) -> None:
    _, phases = llama7b
    crossover = phases.decode.crossover("B", {"T": 1})
    # above the A100's ridge point (153 FLOP/byte): the unfused activations add bytes per sequence
    assert crossover is not None and A100.ridge_point("fp16") < crossover < 400
    assert phases.decode.at({"B": int(crossover) - 1, "T": 1})["bound"] == "memory"
    assert phases.decode.at({"B": int(crossover) + 1, "T": 1})["bound"] == "compute"
    # with 32 KV heads a 4k cache reads 2 GiB per sequence: no batch size makes the step compute-bound
    assert phases.decode.crossover("B", {"T": 4096}) is None


def test_prefill_is_compute_bound_for_a_long_prompt(llama7b: tuple[Graph, Phases]) -> None:
    _, phases = llama7b
    assert phases.prefill.at({"B": 1, "S": 2048})["bound"] == "compute"
    assert phases.prefill.at({"B": 1, "S": 2})["bound"] == "memory"
