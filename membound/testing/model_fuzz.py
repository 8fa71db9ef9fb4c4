"""Differential model fuzzing: random small models through every backend, compared with eager PyTorch.

``draw_case(seed)`` draws a small decoder: a Hugging Face Llama / Mistral / Qwen2 / GPT-2 built from a
random config, or one of membound's own Llama / GPT-2 / Mixtral models. Drawn are the layer count,
heads, GQA ratio, head dim, vocab, MLP width, activation, norm eps, rope theta, biases, tied
embeddings, GPT-2 attention options, Mistral's sliding window, the batch, each row's prompt length
(shorter rows are left-padded and get an attention mask) and the number of new tokens.
``run_case(case)`` then checks, for each backend (``reference``; ``triton``, which runs under
``TRITON_INTERPRET=1`` on the CPU):

1. **forward**: the compiled model's logits equal eager's at every non-padded position, within the
   dtype's tolerance (``TOLERANCE``: fp32 atol = rtol = 1e-4; fp16 2e-2; bf16 6e-2); in fp16 / bf16 a difference
   eager shares (eager in the half dtype as far from eager in fp32 there: ``_arbitrate``) is recorded in
   ``arbitrated``, not as a mismatch;
2. **generate**: ``membound.generate`` greedy tokens equal eager greedy decoding (the whole sequence
   recomputed for every token, one row at a time without its padding). A token is compared only
   while eager's top-2 logit margin is clear (``MARGIN``: 1e-3 in fp32, 5e-2 in fp16, 0.25 in bf16):
   at the first step where the two best logits are closer than that, a rounding difference may
   legitimately pick the other token, so that row's comparison stops there (the count of tokens
   left uncompared is reported, never hidden).

Every exception is caught and reported with the stage it came from (``forward[triton]``,
``generate[reference]``...), so a long run counts exception types instead of stopping. A case is
reproducible from its seed alone: ``benches/fuzz_models.py --seeds N``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import random
import traceback
from typing import Any, Iterator, Optional

import torch

FAMILIES = ("hf-llama", "hf-mistral", "hf-qwen2", "hf-gpt2", "llama", "gpt2", "mixtral")
# drawn only when asked for (``families=`` / ``--families``; the default draw, and so every fixed seed, is unchanged):
# HF OPT (counted learned positions), GPT-J (rotary rows gathered from a table), BLOOM (flattened heads, ALiBi),
# GPT-Neo (a where-applied causal bias, global and local layers), XGLM (flattened heads, a floored mask, sinusoid rows
# by index_select), CodeGen (f32 scores, the mask added before the scale), MPT (an ALiBi table sliced by a max of
# sizes, then a boolean fill), gpt-oss (attention sinks, sliding and full layers, q/k/v and o biases, YaRN rotary, a
# mixture of experts with biases and a clamped SwiGLU)
# DeepSeek-V2 / V3 (multi-head latent attention, V2's complex rotary captured as real arithmetic, experts after a
# dense first layer; V3's group-limited routing with a correction bias)
# Llama 4 (chunked attention with chunks of 2-5 positions on RoPE layers, full NoPE layers with the position's
# attention temperature, q/k L2 norms, experts with a shared one and sigmoid router weights on the input)
EXTRA_FAMILIES = ("hf-opt", "hf-gptj", "hf-bloom", "hf-gptneo", "hf-xglm", "hf-codegen", "hf-mpt", "hf-gpt-oss",
                  "hf-deepseek-v2", "hf-deepseek-v3", "hf-llama4")
_HF_CLASSES = {"hf-llama": ("LlamaConfig", "LlamaForCausalLM"), "hf-mistral": ("MistralConfig", "MistralForCausalLM"),
               "hf-qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "hf-gpt2": ("GPT2Config", "GPT2LMHeadModel"),
               "hf-opt": ("OPTConfig", "OPTForCausalLM"), "hf-gptj": ("GPTJConfig", "GPTJForCausalLM"),
               "hf-bloom": ("BloomConfig", "BloomForCausalLM"), "hf-gptneo": ("GPTNeoConfig", "GPTNeoForCausalLM"),
               "hf-xglm": ("XGLMConfig", "XGLMForCausalLM"), "hf-codegen": ("CodeGenConfig", "CodeGenForCausalLM"),
               "hf-mpt": ("MptConfig", "MptForCausalLM"), "hf-gpt-oss": ("GptOssConfig", "GptOssForCausalLM"),
               "hf-deepseek-v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM"),
               "hf-deepseek-v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM"),
               "hf-llama4": ("Llama4TextConfig", "Llama4ForCausalLM")}
BACKENDS = ("reference", "triton")
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}  # atol = rtol
MARGIN = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 0.25}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """One drawn model and its inputs; everything needed to rebuild it is here."""

    seed: int
    family: str
    config: dict[str, Any]  # keyword arguments of the family's config class
    lengths: tuple[int, ...]  # prompt length of each row; shorter rows are left-padded
    new_tokens: int
    dtype: str = "float32"
    masked_forward: bool = True  # HF models: the forward check passes the attention mask

    def describe(self) -> str:
        cfg = ", ".join(f"{k}={v}" for k, v in sorted(self.config.items()))
        return (f"seed={self.seed} {self.family} [{cfg}] lengths={list(self.lengths)} new={self.new_tokens} "
                f"dtype={self.dtype}")


@dataclasses.dataclass
class CaseResult:
    """What one case found: ``mismatches`` and ``errors`` (stage: exception type and message) are empty
    when it passed; ``tokens_compared`` / ``tokens_skipped`` count greedy tokens over all backends."""

    case: ModelCase
    mismatches: list[str] = dataclasses.field(default_factory=list)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    tokens_compared: int = 0
    tokens_skipped: int = 0
    # half-precision forward differences from eager that eager itself shares (see _arbitrate): not mismatches
    arbitrated: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.errors


def draw_case(seed: int, families: tuple[str, ...] = FAMILIES, dtype: str = "float32",
              max_layers: int = 2, max_new_tokens: int = 4) -> ModelCase:
    """A random small model and prompt from ``seed`` (the same seed always gives the same case)."""
    rng = random.Random(seed)
    family = rng.choice(families)
    kv_heads = rng.choice([1, 2, 3])
    heads = kv_heads * rng.choice([1, 2, 4])
    head_dim = rng.choice([8, 12, 16]) if family.startswith("hf-") and family != "hf-gpt2" else rng.choice([8, 16])
    layers = rng.randint(1, max_layers)
    vocab = rng.randint(40, 300)
    width = rng.choice([16, 24, 40, 72])
    eps = rng.choice([1e-6, 1e-5, 1e-2])
    theta = rng.choice([100.0, 10000.0, 1e6])
    tie = rng.random() < 0.4
    config: dict[str, Any]
    if family in ("hf-llama", "hf-mistral", "hf-qwen2"):
        # the hidden size may differ from heads * head_dim (HF projects), but HF wants it divisible by heads
        config = dict(vocab_size=vocab, hidden_size=heads * (head_dim + rng.choice([0, 0, 4])), head_dim=head_dim,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      intermediate_size=width, rms_norm_eps=eps, rope_theta=theta, tie_word_embeddings=tie,
                      hidden_act=rng.choice(["silu", "silu", "gelu", "gelu_pytorch_tanh", "relu"]))
        if family == "hf-llama":
            config.update(attention_bias=rng.random() < 0.3, mlp_bias=rng.random() < 0.3)
        if family == "hf-mistral":
            config.update(sliding_window=rng.choice([None, None, 4, 7]))
    elif family == "hf-gpt2":
        heads = rng.choice([1, 2, 3, 4])
        config = dict(vocab_size=vocab, n_embd=heads * rng.choice([8, 12, 16]), n_layer=layers, n_head=heads,
                      n_positions=64, layer_norm_epsilon=eps, tie_word_embeddings=tie or rng.random() < 0.5,
                      n_inner=rng.choice([None, width]),
                      activation_function=rng.choice(["gelu_new", "gelu", "relu", "silu", "gelu_pytorch_tanh"]),
                      scale_attn_by_inverse_layer_idx=rng.random() < 0.3,
                      attn_implementation=rng.choice(["eager", "sdpa"]))
    elif family in EXTRA_FAMILIES:
        config = _extra_config(family, rng, vocab, heads, head_dim, layers, width, eps, tie)
    elif family == "gpt2":
        heads = rng.choice([1, 2, 4])
        config = dict(vocab_size=vocab, n_positions=64, dim=heads * head_dim, n_layers=layers, n_heads=heads,
                      norm_eps=eps)
    else:  # membound's llama / mixtral
        config = dict(vocab_size=vocab, dim=heads * head_dim, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
                      intermediate_size=width, norm_eps=eps, rope_theta=theta, tie_embeddings=tie)
        if family == "mixtral":
            experts = rng.choice([2, 3, 4])
            config.update(n_experts=experts, top_k=rng.randint(1, min(2, experts)))
    batch = rng.choice([1, 1, 2, 3])
    lengths = tuple(rng.randint(1, 10) for _ in range(batch))
    return ModelCase(seed=seed, family=family, config=config, lengths=lengths,
                     new_tokens=rng.randint(1, max_new_tokens), dtype=dtype, masked_forward=rng.random() < 0.7)


def _extra_config(family: str, rng: random.Random, vocab: int, heads: int, head_dim: int, layers: int, width: int,
                  eps: float, tie: bool) -> dict[str, Any]:
    """The config draw of an ``EXTRA_FAMILIES`` member (multi-head attention, but gpt-oss: the others have no
    GQA)."""
    hidden = heads * head_dim
    if family in ("hf-deepseek-v2", "hf-deepseek-v3"):  # latent attention: kv heads = heads; rope + nope head dims
        rope = rng.choice([4, 8])
        experts = rng.choice([4, 8])
        config = dict(vocab_size=vocab, hidden_size=heads * rng.choice([8, 16]), num_attention_heads=heads,
                      num_key_value_heads=heads, num_hidden_layers=layers, intermediate_size=width,
                      rms_norm_eps=eps, kv_lora_rank=rng.choice([8, 16]), q_lora_rank=rng.choice([None, 16]),
                      qk_rope_head_dim=rope, qk_nope_head_dim=rng.choice([4, 8]), v_head_dim=rng.choice([8, 16]),
                      n_routed_experts=experts, num_experts_per_tok=rng.randint(1, 2), moe_intermediate_size=width,
                      first_k_dense_replace=rng.randint(0, 1), max_position_embeddings=64, tie_word_embeddings=tie)
        if family == "hf-deepseek-v3":
            config.update(n_group=2, topk_group=rng.randint(1, 2))
        return config
    if family == "hf-gpt-oss":  # GQA over the heads' divisors; each layer sliding (a window of 2-7) or full
        experts = rng.choice([2, 3, 4])
        kv_heads = rng.choice([d for d in (1, 2, 3, 4) if heads % d == 0])
        return dict(vocab_size=vocab, hidden_size=rng.choice([hidden, 2 * hidden]), head_dim=head_dim,
                    num_attention_heads=heads, num_key_value_heads=kv_heads,
                    num_hidden_layers=layers, intermediate_size=width, rms_norm_eps=eps, num_local_experts=experts,
                    num_experts_per_tok=rng.randint(1, min(2, experts)), sliding_window=rng.choice([2, 4, 7]),
                    layer_types=[rng.choice(["sliding_attention", "full_attention"]) for _ in range(layers)],
                    max_position_embeddings=64, tie_word_embeddings=tie)
    if family == "hf-llama4":  # GQA over the heads' divisors; each layer chunked with RoPE or full without
        experts = rng.choice([1, 2, 4])
        kv_heads = rng.choice([d for d in (1, 2, 3, 4) if heads % d == 0])
        return dict(vocab_size=vocab, hidden_size=hidden, head_dim=head_dim, num_attention_heads=heads,
                    num_key_value_heads=kv_heads, num_hidden_layers=layers, intermediate_size=width,
                    intermediate_size_mlp=rng.choice([width, 2 * width]), rms_norm_eps=eps, num_local_experts=experts,
                    num_experts_per_tok=1, interleave_moe_layer_step=rng.choice([1, 2]),
                    attention_chunk_size=rng.choice([2, 3, 5]),
                    no_rope_layers=[rng.randint(0, 1) for _ in range(layers)],
                    use_qk_norm=rng.random() < 0.5, attn_temperature_tuning=rng.random() < 0.7,
                    floor_scale=rng.choice([2, 4, 8]), attn_scale=rng.choice([0.1, 0.5]), rope_theta=10000.0,
                    max_position_embeddings=64, tie_word_embeddings=tie)
    if family == "hf-opt":
        return dict(vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=layers,
                    ffn_dim=width, max_position_embeddings=64, word_embed_proj_dim=hidden,
                    do_layer_norm_before=rng.random() < 0.7, activation_function=rng.choice(["relu", "gelu"]),
                    tie_word_embeddings=tie or rng.random() < 0.5)
    if family == "hf-gptj":
        return dict(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=64,
                    rotary_dim=rng.choice([head_dim // 2 - head_dim // 2 % 2, head_dim]), n_inner=width,
                    layer_norm_epsilon=eps, activation_function=rng.choice(["gelu_new", "relu"]),
                    tie_word_embeddings=tie)
    if family == "hf-bloom":
        return dict(vocab_size=vocab, hidden_size=hidden, n_layer=layers, n_head=heads, layer_norm_epsilon=eps,
                    tie_word_embeddings=tie or rng.random() < 0.5)
    if family == "hf-xglm":
        return dict(vocab_size=vocab, d_model=hidden, num_layers=layers, attention_heads=heads, ffn_dim=width,
                    max_position_embeddings=64, scale_embedding=rng.random() < 0.5,
                    activation_function=rng.choice(["gelu", "relu"]), tie_word_embeddings=tie or rng.random() < 0.5)
    if family == "hf-codegen":  # its fused qkv splits in 4 (mp_num): heads a multiple of 4
        heads = 4 * rng.choice([1, 2])
        return dict(vocab_size=vocab, n_embd=heads * head_dim, n_layer=layers, n_head=heads, n_positions=64, n_ctx=64,
                    rotary_dim=rng.choice([head_dim // 2 - head_dim // 2 % 2, head_dim]), n_inner=width,
                    layer_norm_epsilon=eps, activation_function=rng.choice(["gelu_new", "relu"]),
                    tie_word_embeddings=tie)
    if family == "hf-mpt":  # ALiBi over max_seq_len keys (the prompt and new tokens stay within it)
        return dict(vocab_size=vocab, d_model=hidden, n_heads=heads, n_layers=layers, max_seq_len=64,
                    expansion_ratio=rng.choice([1, 2, 4]), layer_norm_epsilon=eps, no_bias=rng.random() < 0.5,
                    attn_config={"alibi": True, "alibi_bias_max": rng.choice([4, 8])}, tie_word_embeddings=tie)
    kinds = [rng.choice(["global", "local"]) for _ in range(layers)]  # hf-gptneo: each layer global or local
    return dict(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=width,
                attention_types=[[kinds, 1]], window_size=rng.choice([2, 4, 256]), max_position_embeddings=64,
                layer_norm_epsilon=eps, activation_function=rng.choice(["gelu_new", "relu"]),
                tie_word_embeddings=tie)


def build_case_model(case: ModelCase, device: str = "cpu") -> torch.nn.Module:
    """The eager model of ``case`` in its dtype on ``device``, weights ``N(0, 1/fan_in)`` from the seed
    (HF's default std of 0.02 makes tiny models' logits nearly uniform: every greedy step a near tie)."""
    from membound.models.build import init_weights

    if case.family.startswith("hf-"):
        import transformers as T

        config_cls, model_cls = (getattr(T, name) for name in _HF_CLASSES[case.family])
        config = config_cls(**case.config, bos_token_id=1, eos_token_id=None, pad_token_id=0)
        model = model_cls(config)
        model.generation_config.eos_token_id = None  # the eager oracle does not stop at EOS
    else:
        from membound.models.build import model_from_config
        from membound.models.gpt2 import GPT2Config
        from membound.models.llama import LlamaConfig
        from membound.models.mixtral import MixtralConfig

        config_cls = {"llama": LlamaConfig, "gpt2": GPT2Config, "mixtral": MixtralConfig}[case.family]
        model = model_from_config(config_cls(**case.config))
    model = model.to(device=device, dtype=DTYPES[case.dtype])
    init_weights(model, case.seed)
    return model.eval().requires_grad_(False)


def case_inputs(case: ModelCase, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids ``[B, S]`` (pad id 0, real ids >= 3) and their attention mask."""
    gen = torch.Generator().manual_seed(case.seed)
    vocab = case.config["vocab_size"]
    longest = max(case.lengths)
    ids = torch.randint(3, vocab, (len(case.lengths), longest), generator=gen)
    mask = torch.ones_like(ids)
    for row, n in enumerate(case.lengths):
        ids[row, :longest - n] = 0
        mask[row, :longest - n] = 0
    return ids.to(device), mask.to(device)


def _logits(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


def eager_forward(model: torch.nn.Module, case: ModelCase, ids: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """Eager logits of the forward check and the keyword arguments it was called with."""
    kwargs: dict[str, Any] = {}
    if case.family.startswith("hf-"):
        kwargs["use_cache"] = False
        if case.masked_forward:
            kwargs["attention_mask"] = mask
    with torch.no_grad():
        return _logits(model(ids, **kwargs)), kwargs


def eager_greedy(model: torch.nn.Module, case: ModelCase, ids: torch.Tensor,
                 mask: torch.Tensor) -> list[tuple[list[int], list[float]]]:
    """Per row: eager greedy tokens and top-2 margins for ``case`` (see :func:`greedy_oracle`)."""
    return greedy_oracle(model, ids, mask, case.new_tokens, hf=case.family.startswith("hf-"))


def greedy_oracle(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int,
                  hf: bool = False) -> list[tuple[list[int], list[float]]]:
    """Per row: eager greedy tokens (the whole sequence recomputed each step, without the row's
    padding) and the top-2 logit margin at each step. ``hf``: call the model with ``use_cache=False``."""
    rows = []
    kwargs = {"use_cache": False} if hf else {}
    with torch.no_grad():
        for row, m in zip(ids, mask):
            seq = row[m.bool()][None]
            tokens, margins = [], []
            for _ in range(new_tokens):
                last = _logits(model(seq, **kwargs))[0, -1].float()
                top = last.topk(2).values
                margins.append(float(top[0] - top[1]))
                token = int(last.argmax())
                tokens.append(token)
                seq = torch.cat([seq, seq.new_tensor([[token]])], dim=1)
            rows.append((tokens, margins))
    return rows


def compare_greedy(oracle: list[tuple[list[int], list[float]]], new: list[list[int]], margin: float,
                   stage: str) -> tuple[int, int, list[str]]:
    """``(compared, skipped, mismatches)`` of generated tokens ``new[row][step]`` against the oracle:
    each row is compared step by step while eager's top-2 margin is at least ``margin``; at the first
    closer step the rest of the row is skipped (a rounding difference may pick the other token there),
    and at the first differing token the row's comparison stops with a mismatch."""
    compared = skipped = 0
    mismatches = []
    for row, (tokens, margins) in enumerate(oracle):
        for step, (token, gap) in enumerate(zip(tokens, margins)):
            if gap < margin:
                skipped += len(tokens) - step
                break
            compared += 1
            if new[row][step] != token:
                mismatches.append(f"{stage}: row {row} step {step}: token {new[row][step]}, eager {token} "
                                  f"(eager margin {gap:.3g}); tokens {new[row]} vs {tokens}")
                break
    return compared, skipped, mismatches


def _close(got: torch.Tensor, want: torch.Tensor, tol: float) -> tuple[bool, float]:
    err = (got.float() - want.float()).abs()
    bad = err > tol + tol * want.float().abs()
    finite = torch.isfinite(got).all() == torch.isfinite(want).all()
    return bool(finite) and not bool(bad.any()), float(err.max()) if err.numel() else 0.0


def _arbitrate(model: torch.nn.Module, ids: torch.Tensor, kwargs: dict[str, Any], got: torch.Tensor,
               want: torch.Tensor, valid: torch.Tensor, tol: float) -> tuple[bool, float]:
    """A half-precision forward that differs from eager's: eager in fp32 (on a copy of the model) decides. The
    difference counts only where the compiled logits are further from fp32 than eager's own half-precision logits
    are, by more than the tolerance (eager's fp16 softmax over a sink column, or a near-tie of two experts' router
    logits, can stray by whole units where the compiled model, which routes and normalises in fp32, does not).
    Returns (no such position, the largest excess)."""
    import copy

    with torch.no_grad():
        ref = _logits(copy.deepcopy(model).float()(ids, **kwargs)).float()[valid]
    ours = (got.float()[valid] - ref).abs()
    theirs = (want.float()[valid] - ref).abs()
    excess = ours - theirs
    return not bool((excess > tol + tol * ref.abs()).any()), float(excess.max()) if excess.numel() else 0.0


def run_case(case: ModelCase, backends: tuple[str, ...] = BACKENDS, device: str = "cpu",
             generate: bool = True, cuda_graphs: bool = False) -> CaseResult:
    """Compile ``case``'s model with each backend and compare forward logits and greedy tokens with eager
    (``cuda_graphs``: the compiled decode steps replay CUDA graphs, on a CUDA device)."""
    import membound

    result = CaseResult(case)
    dtype = DTYPES[case.dtype]
    try:
        model = build_case_model(case, device)
        ids, mask = case_inputs(case, device)
        want, kwargs = eager_forward(model, case, ids, mask)
        oracle = eager_greedy(model, case, ids, mask) if generate else []
    except Exception as e:  # the draw itself is bad: say so (a fuzzer bug, not a membound one)
        result.errors["eager"] = _describe(e)
        return result
    valid = mask.bool() if "attention_mask" in kwargs else torch.ones_like(mask, dtype=torch.bool)
    for backend in backends:
        stage = f"forward[{backend}]"
        try:
            compiled = membound.compile(model, backend=backend, cuda_graphs=cuda_graphs and backend == "triton")
            with torch.no_grad():
                got = _logits(compiled(ids, **kwargs))
            ok, err = _close(got[valid], want[valid], TOLERANCE[dtype])
            if not ok and dtype != torch.float32:
                fair, excess = _arbitrate(model, ids, kwargs, got, want, valid, TOLERANCE[dtype])
                if fair:
                    result.arbitrated.append(f"{stage}: logits differ from eager by up to {err:.3g}, but eager in "
                                             f"{case.dtype} is as far from eager in fp32 there")
                    ok = True
            if not ok:
                result.mismatches.append(f"{stage}: logits differ from eager by up to {err:.3g} "
                                         f"(tolerance {TOLERANCE[dtype]:g})")
            if not generate:
                continue
            stage = f"generate[{backend}]"
            out = membound.generate(compiled, ids, case.new_tokens, attention_mask=mask)
        except Exception as e:
            result.errors[stage] = _describe(e)
            continue
        compared, skipped, wrong = compare_greedy(oracle, out[:, ids.shape[1]:].tolist(), MARGIN[dtype], stage)
        result.tokens_compared += compared
        result.tokens_skipped += skipped
        result.mismatches += wrong
    return result


@contextlib.contextmanager
def forced_splits() -> Iterator[None]:
    """Within: flash-decoding over 16-slot chunks and split-K GEMVs (``BLOCK_K`` 16, K in 2-4 parts; a resident
    tile as wide as its part),
    whatever the heuristics would pick (on the CPU they pick one split), so every decode step takes the
    split launches and their last-arriving-program merges."""
    attention = importlib.import_module("membound.backends.triton.kernels.decode_attention")
    linear = importlib.import_module("membound.backends.triton.kernels.linear")
    pick_attention, pick_linear = attention.pick_config, linear.pick_config

    def attention_config(*args: Any) -> Any:
        return dataclasses.replace(pick_attention(*args), block_t=16, chunk=16)

    def linear_config(m: int, n: int, k: int, *args: Any, **kwargs: Any) -> Any:
        cfg = pick_linear(m, n, k, *args, **kwargs)
        split = max(2, min(4, k // 16))
        # a resident tile holds a program's whole K range: as wide as one split (a power of two)
        block_k = max(16, linear.next_pow2(linear.cdiv(k, split))) if cfg.resident else 16
        return dataclasses.replace(cfg, block_k=block_k, split_k=split)

    attention.pick_config, linear.pick_config = attention_config, linear_config
    try:
        yield
    finally:
        attention.pick_config, linear.pick_config = pick_attention, pick_linear


def _describe(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    where = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {first} (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"


def error_type(message: str) -> str:
    """The exception type name of a ``CaseResult.errors`` entry."""
    return message.split(":", 1)[0]


def summarize(results: list[CaseResult], extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Counts of a run: cases, passes, mismatches, exception types per stage, tokens compared/skipped."""
    errors: dict[str, int] = {}
    for r in results:
        for stage, message in r.errors.items():
            key = f"{stage} {error_type(message)}"
            errors[key] = errors.get(key, 0) + 1
    families: dict[str, int] = {}
    for r in results:
        families[r.case.family] = families.get(r.case.family, 0) + 1
    return dict(extra or {}, cases=len(results), passed=sum(r.ok for r in results),
                cases_with_mismatches=sum(bool(r.mismatches) for r in results),
                cases_with_exceptions=sum(bool(r.errors) for r in results), exception_types=errors,
                cases_arbitrated=sum(bool(r.arbitrated) for r in results),
                tokens_compared=sum(r.tokens_compared for r in results),
                tokens_skipped_near_ties=sum(r.tokens_skipped for r in results), families=families)
