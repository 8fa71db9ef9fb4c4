"""gpt-oss decode: Hugging Face and membound on the same weights, one run.

    PYTHONPATH=. python benches/gpt_oss.py                 # GPU: gpt-oss-20b's shape cut to 8 layers, batch 1 and 8
    PYTHONPATH=. python benches/gpt_oss.py --quick         # GPU: 4 layers, 32 tokens, no hf static
    PYTHONPATH=. python benches/gpt_oss.py --smoke         # CPU: a tiny shape, fp32 (plumbing only)

The model is ``transformers.GptOssForCausalLM`` with gpt-oss-20b's published config (hidden 2880, 64 query and 8
kv heads of 64, 32 experts top-4 of I = 2880 with biases and the clamped SwiGLU, attention sinks, sliding (128)
and full layers alternating, YaRN rotary), cut to ``--layers`` layers (default 8: ~7.6B parameters, 15 GB in
bf16), random bf16 weights (the real checkpoint's experts are MXFP4; HF dequantizes them to bf16 where its MXFP4
kernels are absent, which is what this times). Contenders on the same module:

- ``membound``: ``membound.generate(membound.compile(model), ...)`` (attention sinks in the flash kernels; the
  experts fused into one ``moe`` a layer since session 21 (biases and the clamped SwiGLU in the expert kernels'
  epilogues; until then two grouped_mm a layer), the decode step a CUDA graph);
- ``hf eager``: ``model.generate`` (dynamic cache) — batch 1 only unless ``--hf-batches``;
- ``hf static``: ``generate(..., cache_implementation="static")`` (compiles itself) — not in ``--quick``.

Decode tokens/s = batch * (N - 1) / (t(generate N) - t(generate 1)): the prefill and the first token cancel.
Each contender's first greedy tokens at batch 1 are compared with HF eager's (bf16: the first divergence is
reported, not fatal). Roofline per decode step: the bytes it must read (every non-expert weight once, the input
embedding excepted (gathered); per layer the expected distinct experts ``E * (1 - (1 - k/E)^B)`` times one
expert's weights and biases; the live K/V, a sliding layer's capped at its window) over the read bandwidth of
``x.sum()`` measured in this run. JSON to ``benches/results/gpt_oss-<gpu>-<date>[-quick|-smoke].json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))
sys.path.insert(0, str(ROOT))

from decode_e2e import free_memory, read_bandwidth, reset_dynamo  # noqa: E402
from moe import Bench as MoeBench  # noqa: E402
from moe import experts_read, hf_generate, hf_reference, write_record  # noqa: E402

import membound  # noqa: E402

# gpt-oss-20b's config (openai/gpt-oss-20b config.json); "120b" the larger model's expert count and layers
SHAPES: dict[str, dict[str, Any]] = {
    "20b": dict(vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_attention_heads=64,
                num_key_value_heads=8, head_dim=64, num_local_experts=32, num_experts_per_tok=4, sliding_window=128,
                num_hidden_layers=24, max_position_embeddings=131072, rms_norm_eps=1e-5, swiglu_limit=7.0,
                rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                                 "original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
                                 "truncate": False}),
    "120b": dict(vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_attention_heads=64,
                 num_key_value_heads=8, head_dim=64, num_local_experts=128, num_experts_per_tok=4,
                 sliding_window=128, num_hidden_layers=36, max_position_embeddings=131072, rms_norm_eps=1e-5,
                 swiglu_limit=7.0),
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=8, num_hidden_layers=2,
                 max_position_embeddings=256),
}
CHECK = 8  # greedy tokens compared with HF eager
# (name, generate(ids, n) -> the n new tokens, batches, the quantization scheme its roofline counts or None)
Contender = tuple[str, Callable[[torch.Tensor, int], torch.Tensor], list[int], Optional[str]]
ROOFLINE = ("batch / (bytes / read_gb_s); bytes = layers * (attention weights and biases + sinks + router + norms + "
            "E*(1-(1-k/E)^batch) * (gate_up + down weights and biases)) + lm_head + final norm + K/V of the live "
            "context (sliding layers: at most the window); the input embedding gathered, not counted")


def build(shape: str, layers: Optional[int], device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """The HF model of ``shape`` cut to ``layers`` layers (alternating sliding and full, sliding first, as the
    checkpoints), random weights: N(0, 0.02), norms 1, sinks N(0, 1)."""
    import transformers as T

    kw = dict(SHAPES[shape])
    n = layers or kw["num_hidden_layers"]
    kw.update(num_hidden_layers=n, layer_types=["sliding_attention" if i % 2 == 0 else "full_attention"
                                                for i in range(n)],
              bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False)
    cfg = T.GptOssConfig(**kw)
    with torch.device("meta"):
        model = T.GptOssForCausalLM(cfg)
    model = model.to(dtype).to_empty(device=device)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("sinks"):
                p.normal_(0.0, 1.0, generator=gen)
            else:
                p.normal_(0.0, 0.02, generator=gen)
        rotary = type(model.model.rotary_emb)
        model.model.rotary_emb = rotary(cfg).to(device)  # (its inv_freq buffer was left empty on meta)
    model.generation_config.eos_token_id = None
    return model.eval().requires_grad_(False)


def step_bytes(cfg: Any, batch: int, context: int, itemsize: int) -> float:
    """Bytes one decode step must read (see the module docstring)."""
    d, hd, e, k = cfg.hidden_size, cfg.head_dim, cfg.num_local_experts, cfg.num_experts_per_tok
    i = cfg.intermediate_size
    attn = d * hd * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads) \
        + hd * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) + d + cfg.num_attention_heads
    router = e * d + e
    expert = d * 2 * i + 2 * i + i * d + d
    per_layer = attn + router + 2 * d + experts_read(e, k, batch) * expert
    kv = 0
    for t in cfg.layer_types:
        seen = min(context, cfg.sliding_window) if t == "sliding_attention" else context
        kv += 2 * batch * cfg.num_key_value_heads * seen * hd
    return itemsize * (cfg.num_hidden_layers * per_layer + cfg.vocab_size * d + d + kv)


class Bench(MoeBench):
    """``benches/moe.py``'s bench (rows, the decode measurement) over HF gpt-oss; ``deepseek_moe.py``'s subclasses it
    (``name``, ``roofline``, ``build_model``, ``step_bytes``, ``more_contenders``)."""

    card = "cpu"
    name = "gpt_oss"
    roofline = ROOFLINE

    def save(self, bw: float) -> Path:
        return write_record(self.name, self.card, bw, self.args, self.rows, self.roofline)

    def build_model(self, shape: str) -> Any:
        return build(shape, self.args.layers, self.device, self.dtype)

    def step_bytes(self, model: Any, batch: int, context: int, scheme: Optional[str]) -> float:
        return step_bytes(model.config, batch, context, torch.empty((), dtype=self.dtype).element_size())

    def more_contenders(self, model: Any, hf_batches: list[int]) -> list[Contender]:
        """Contenders beyond membound and HF eager (none in ``--quick`` / ``--smoke``): HF's static cache."""
        return [("hf static", lambda ids, n: hf_generate(model, ids, n, cache_implementation="static"), hf_batches,
                 None)]

    def run_shape(self, shape: str, bw: float) -> None:
        a = self.args
        self.gen = torch.Generator(self.device).manual_seed(0)
        print(f"{shape} ({a.layers or 'all'} layers): building ({self.dtype} random weights)", flush=True)
        model = self.build_model(shape)
        cfg = model.config
        prompt = torch.randint(0, cfg.vocab_size, (1, a.prompt), device=self.device, generator=self.gen)
        ref = hf_reference(model, prompt, max(CHECK, a.new_tokens))
        compiled = membound.compile(model)
        hf_batches = [b for b in a.hf_batches if b in a.batches] or [1]
        contenders: list[Contender] = [
            ("membound", lambda ids, n: membound.generate(compiled, ids, n)[:, ids.shape[1]:], a.batches, None),
            ("hf eager", lambda ids, n: hf_generate(model, ids, n), hf_batches, None)]
        if not (a.smoke or a.quick):
            contenders[1:1] = self.more_contenders(model, hf_batches)
        for name, gen, bs, scheme in contenders:
            if a.budget_s and time.perf_counter() - self.started > a.budget_s:
                self.row(shape=shape, mode="decode", contender=name, error="skipped: over --budget-s")
                continue

            def bytes_of(batch: int, context: int, scheme: Optional[str] = scheme) -> float:
                return self.step_bytes(model, batch, context, scheme)

            self.decode(shape, name, gen, cfg.vocab_size, bs, ref, bw, bytes_of)
            self.save(bw)  # after every contender: a run cut short by its timeout keeps what it measured
            if name.startswith("hf "):
                reset_dynamo()
        contenders.clear()  # (the model and its compiled twin go with this frame; main frees memory after)


def hf_moe_args(argv: Optional[list[str]], doc: str, shapes: dict[str, Any], default_shape: str,
                quick: str = "4 layers, batch 1 and 8, 32 tokens, no hf static") -> argparse.Namespace:
    """The command line of the HF MoE decode benches (this one, ``deepseek_moe.py``): shapes, layers kept, batches,
    tokens, ``--quick`` (4 layers), ``--smoke`` (CPU, the ``tiny`` shape), a time budget."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=None, choices=sorted(shapes))
    p.add_argument("--layers", type=int, default=None, help="layers kept (default 8 on a GPU, all for tiny)")
    p.add_argument("--batches", nargs="+", type=int, default=None)
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--hf-batches", nargs="+", type=int, default=[1], help="HF contenders' decode batches")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shape, fp32 (plumbing only)")
    p.add_argument("--budget-s", type=float, default=None, help="skip contenders starting later (GPU: 450)")
    p.add_argument("--out", default=str(ROOT / "benches" / "results"))
    a = p.parse_args(argv)
    if a.smoke:
        a.shapes, a.batches, a.new_tokens = a.shapes or ["tiny"], a.batches or [1, 2], a.new_tokens or 4
    elif a.quick:
        a.batches, a.new_tokens = a.batches or [1, 8], a.new_tokens or 32
    a.shapes = a.shapes or [default_shape]
    a.layers = a.layers if a.layers is not None else (None if a.smoke else 4 if a.quick else 8)
    a.batches = a.batches or [1, 8]
    a.new_tokens = a.new_tokens or 64
    if a.budget_s is None and torch.cuda.is_available() and not a.smoke:
        a.budget_s = 450.0
    return a


def run_bench(bench: Any) -> int:
    """Measure the read bandwidth, run every shape of ``bench.args``, write the record."""
    bw = read_bandwidth(bench.device, 2 << 30 if bench.device == "cuda" else 64 << 20)
    card = bench.card = torch.cuda.get_device_name() if bench.device == "cuda" else "cpu"
    print(f"{card}: read bandwidth {bw:.0f} GB/s", flush=True)
    with torch.no_grad():
        for shape in bench.args.shapes:
            bench.run_shape(shape, bw)
            free_memory()
    bench.save(bw)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_bench(Bench(hf_moe_args(argv, __doc__, SHAPES, "20b")))


if __name__ == "__main__":
    raise SystemExit(main())
