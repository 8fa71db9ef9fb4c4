"""The built-in models: shapes, causality, export-friendliness, presets, and equivalence with Hugging Face.

Tolerances: float32 comparisons of two implementations of the same math use atol=rtol=1e-4 (different
summation orders); the exported program and eager run the same kernels, atol=1e-5; bfloat16 against
float32 uses atol=0.15 on logits of std ~1 (two layers of bf16 rounding).
"""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim, export

from membound.models import (
    MODELS,
    GPT2Config,
    LlamaConfig,
    MixtralConfig,
    build_model,
    get_config,
    init_weights,
    list_models,
    model_from_config,
)

TINY = ["llama-tiny", "gpt2-tiny", "mixtral-tiny"]


def random_ids(vocab_size: int, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    """Token ids ``[batch, seq]`` from a fixed seed."""
    return torch.randint(0, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_logits_shape_and_spread(name: str) -> None:
    """Logits are [B, S, V], finite, and spread out (the init is not degenerate)."""
    model = build_model(name)
    vocab = get_config(name).vocab_size
    for batch, seq in [(2, 7), (1, 1), (3, 1)]:
        logits = model(random_ids(vocab, batch, seq))
        assert logits.shape == (batch, seq, vocab)
        assert logits.dtype == torch.float32
        assert torch.isfinite(logits).all()
    logits = model(random_ids(vocab, 2, 7))
    assert logits.std() > 0.3, "logits nearly constant: initialisation is degenerate"


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_is_causal_and_rows_are_independent(name: str) -> None:
    """Changing token t of row 0 leaves positions < t and row 1 unchanged, and changes position t."""
    model = build_model(name)
    vocab = get_config(name).vocab_size
    ids = random_ids(vocab, 2, 9)
    t = 5
    changed = ids.clone()
    changed[0, t] = (ids[0, t] + 1) % vocab
    before, after = model(ids), model(changed)
    torch.testing.assert_close(after[0, :t], before[0, :t], atol=1e-6, rtol=0)
    torch.testing.assert_close(after[1], before[1], atol=1e-6, rtol=0)
    assert (after[0, t:] - before[0, t:]).abs().amax(-1).min() > 1e-3, "later positions ignore token t"


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_exports_with_dynamic_batch_and_seq(name: str) -> None:
    """torch.export with Dim.AUTO keeps both dims symbolic; the program matches eager at other shapes."""
    model = build_model(name)
    vocab = get_config(name).vocab_size
    program = export(model, (random_ids(vocab, 2, 5),), dynamic_shapes=({0: Dim.AUTO, 1: Dim.AUTO},))
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == "input_ids")
    assert all(isinstance(d, torch.SymInt) for d in placeholder.meta["val"].shape), "a dim was specialised"
    exported = program.module()
    for batch, seq in [(3, 7), (1, 1), (1, 11)]:
        ids = random_ids(vocab, batch, seq, seed=batch * 100 + seq)
        torch.testing.assert_close(exported(ids), model(ids), atol=1e-5, rtol=1e-5)


def test_build_model_is_deterministic_per_seed() -> None:
    a = build_model("mixtral-tiny", seed=3).state_dict()
    b = build_model("mixtral-tiny", seed=3).state_dict()
    c = build_model("mixtral-tiny", seed=4).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", TINY)
def test_build_model_initialises_every_parameter_non_trivially(name: str) -> None:
    """No parameter is left constant: biases are non-zero, norm weights are not exactly one."""
    model = build_model(name)
    assert not model.training
    for pname, param in model.named_parameters():
        assert not param.requires_grad, pname
        assert param.std() > 1e-3, f"{pname} is (nearly) constant"


def test_build_model_in_bfloat16_tracks_float32() -> None:
    ids = random_ids(256, 2, 7)
    ref = build_model("llama-tiny")(ids)
    model = build_model("llama-tiny", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    logits = model(ids)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), ref, atol=0.15, rtol=0.05)


def test_list_models_and_unknown_name() -> None:
    names = list_models()
    for required in ["llama-tiny", "gpt2-tiny", "mixtral-tiny", "llama-1b", "llama-8b", "gpt2-small", "mixtral-small"]:
        assert required in names
    with pytest.raises(ValueError, match="llama-tiny.*mixtral-small"):
        build_model("llama-70b")


@pytest.mark.parametrize(
    "name, n_params",
    [
        ("llama-1b", 1_235_814_400),  # Llama-3.2-1B's published count (tied embeddings)
        ("llama-8b", 8_030_261_248),  # Llama-3-8B
        ("gpt2-small", 124_439_808),  # GPT-2 124M (tied head, learned positions)
    ],
)
def test_real_size_presets_have_the_real_parameter_count(name: str, n_params: int) -> None:
    """Built on the meta device (no memory): the shapes match the real checkpoints exactly."""
    with torch.device("meta"):
        model = model_from_config(get_config(name))
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_mixtral_small_preset_shape() -> None:
    config = MODELS["mixtral-small"]
    assert (config.dim, config.n_layers, config.n_experts, config.top_k) == (1024, 8, 8, 2)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: LlamaConfig(dim=64, n_heads=5, n_kv_heads=5), "n_heads=5"),
        (lambda: LlamaConfig(dim=64, n_heads=4, n_kv_heads=3), "n_kv_heads=3"),
        (lambda: LlamaConfig(dim=12, n_heads=4, n_kv_heads=4), "head_dim=3"),
        (lambda: GPT2Config(dim=64, n_heads=6), "n_heads=6"),
        (lambda: MixtralConfig(dim=64, n_heads=4, n_kv_heads=2, n_experts=4, top_k=5), "top_k=5"),
    ],
)
def test_config_rejects_inconsistent_shapes(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


# --- equivalence with Hugging Face implementations (same math, weights copied across) ---------------


def random_model(config: LlamaConfig | GPT2Config | MixtralConfig, seed: int = 0) -> torch.nn.Module:
    model = model_from_config(config)
    init_weights(model, seed)
    return model.eval()


@pytest.mark.parametrize("tied", [False, True])
def test_llama_matches_transformers(tied: bool) -> None:
    transformers = pytest.importorskip("transformers")
    config = LlamaConfig(
        vocab_size=97, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, intermediate_size=80,
        rope_theta=500000.0, norm_eps=1e-6, tie_embeddings=tied,
    )  # fmt: skip
    ours = random_model(config)
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied,
        )
    ).eval()  # fmt: skip
    state = {"model.embed_tokens.weight": ours.tok_embeddings.weight, "model.norm.weight": ours.norm.weight}
    state["lm_head.weight"] = ours.tok_embeddings.weight if tied else ours.output.weight
    for i, layer in enumerate(ours.layers):
        p = f"model.layers.{i}."
        state[p + "input_layernorm.weight"] = layer.attention_norm.weight
        state[p + "post_attention_layernorm.weight"] = layer.ffn_norm.weight
        for hf_name, mine in [("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv"), ("o_proj", "wo")]:
            state[p + f"self_attn.{hf_name}.weight"] = getattr(layer.attention, mine).weight
        for hf_name, mine in [("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")]:
            state[p + f"mlp.{hf_name}.weight"] = getattr(layer.feed_forward, mine).weight
    hf.load_state_dict(state, strict=True)
    ids = random_ids(97, 2, 13)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids, use_cache=False).logits, atol=1e-4, rtol=1e-4)


def test_gpt2_matches_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    config = GPT2Config(vocab_size=97, n_positions=32, dim=48, n_layers=2, n_heads=6)
    ours = random_model(config)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=6, bos_token_id=0, eos_token_id=0,
            attn_implementation="eager",
        )
    ).eval()  # fmt: skip
    state = {
        "transformer.wte.weight": ours.wte.weight,
        "transformer.wpe.weight": ours.wpe.weight,
        "transformer.ln_f.weight": ours.ln_f.weight,
        "transformer.ln_f.bias": ours.ln_f.bias,
        "lm_head.weight": ours.wte.weight,
    }
    for i, block in enumerate(ours.h):
        p = f"transformer.h.{i}."
        for name in ["ln_1", "ln_2"]:
            state[p + f"{name}.weight"] = getattr(block, name).weight
            state[p + f"{name}.bias"] = getattr(block, name).bias
        # HF GPT-2 stores Conv1D weights as [in, out]: the transpose of nn.Linear's.
        for name, linear in [("attn.c_attn", block.attn.c_attn), ("attn.c_proj", block.attn.c_proj),
                             ("mlp.c_fc", block.mlp.c_fc), ("mlp.c_proj", block.mlp.c_proj)]:  # fmt: skip
            state[p + f"{name}.weight"] = linear.weight.t()
            state[p + f"{name}.bias"] = linear.bias
    hf.load_state_dict(state, strict=True)
    ids = random_ids(97, 2, 13)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids, use_cache=False).logits, atol=1e-4, rtol=1e-4)


def test_mixtral_matches_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    config = MixtralConfig(
        vocab_size=97, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, intermediate_size=40, n_experts=5, top_k=2,
    )  # fmt: skip
    ours = random_model(config)
    hf = transformers.MixtralForCausalLM(
        transformers.MixtralConfig(
            vocab_size=97, hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, num_local_experts=5, num_experts_per_tok=2, rope_theta=1e6,
        )
    ).eval()  # fmt: skip
    state = {
        "model.embed_tokens.weight": ours.tok_embeddings.weight,
        "model.norm.weight": ours.norm.weight,
        "lm_head.weight": ours.output.weight,
    }
    for i, layer in enumerate(ours.layers):
        p = f"model.layers.{i}."
        moe = layer.block_sparse_moe
        state[p + "input_layernorm.weight"] = layer.attention_norm.weight
        state[p + "post_attention_layernorm.weight"] = layer.ffn_norm.weight
        for hf_name, mine in [("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv"), ("o_proj", "wo")]:
            state[p + f"self_attn.{hf_name}.weight"] = getattr(layer.attention, mine).weight
        state[p + "mlp.gate.weight"] = moe.gate.weight
        state[p + "mlp.experts.gate_up_proj"] = torch.cat([moe.w1, moe.w3], dim=1)  # [E, 2I, D], gate first
        state[p + "mlp.experts.down_proj"] = moe.w2
    hf.load_state_dict(state, strict=True)
    ids = random_ids(97, 2, 13)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids, use_cache=False).logits, atol=1e-4, rtol=1e-4)
