"""End-to-end greedy decode: eager, torch.compile, Hugging Face and membound on the same weights, one run.

    PYTHONPATH=. python benches/decode_e2e.py --out DIR                      # GPU: llama-1b + llama-8b, b1/b8
    PYTHONPATH=. python benches/decode_e2e.py --models llama-8b --out DIR    # a subset (one device call each)
    python benches/decode_e2e.py --merge A.json B.json --out DIR             # join subset files of one card (-merged)
    python benches/decode_e2e.py --smoke --out DIR                           # CPU, llama-tiny fp32 (CI)

Per model (built-in Llama, bf16, random weights) and batch, every contender generates ``--new-tokens``
tokens after the same random ``--prompt``-token prompts:

- ``eager``: ``static_cache_llama.StaticCacheLlama`` (gpt-fast recipe, the built-in's weights), greedy loop;
- ``compile``: the same model's one-token step under ``torch.compile(mode="reduce-overhead",
  fullgraph=True)`` (prefill eager), compiled afresh per batch (``torch._dynamo.reset()``: static shapes);
  ``--cd-tuning`` adds gpt-fast's Inductor ``coordinate_descent_tuning`` (faster GEMVs, longer compiles);
- ``compile-int8``: the same, every linear (the head too) replaced by gpt-fast's weight-only int8 linear
  (``F.linear(x, W.to(x.dtype)) * scales``) holding the int8 values and scales membound's int8 uses;
- ``hf``: ``transformers.LlamaForCausalLM`` holding the built-in's tensors, ``generate(...,
  cache_implementation="static")`` (which compiles itself on CUDA); its logits are checked first;
- ``membound <backend>``: ``membound.generate(membound.compile(model, backend=...), ids, N)`` for
  ``reference``, ``triton`` and a CUDA-graph variant when membound exposes one; ``--quantize int8,int4``
  adds ``membound triton+graphs <scheme>`` rows (``compile(..., quantize=scheme)``);
  ``--membound-backends ...,triton+graphs+fused`` adds ``membound triton+graphs decode-fused``: the decode
  step built by the ``decode-fused`` pipeline (``MEMBOUND_DECODE_PIPELINE``: residual adds and RMSNorms
  folded into the GEMVs), for an A/B against ``triton+graphs`` in one run; ``...,triton+graphs+gated`` adds
  ``membound triton+graphs gated-down`` (``MEMBOUND_LINEAR_GLU=0``: the MLP's gating in the down GEMV's
  prologue, as before fuse-linear-glu was on by default, instead of the gate/up GEMV's epilogue);
  ``...,triton+graphs+rope`` adds ``membound triton+graphs decode-rope`` (q and k rotated in the q/k/v GEMV's
  epilogue: ``fuse-rope-linear``); ``...,triton+graphs+fused-rope`` adds ``membound triton+graphs
  decode-fused-rope`` (both: the q/k/v GEMV norms x from the partials and rotates q and k);
  ``...,triton+graphs+swap`` / ``+noswap`` adds the swapped tensor-core GEMV (batch 3-16, and the large
  weights at batch 1-2; the default) forced on / off (``MEMBOUND_LINEAR_SWAP``);
- ``membound-hf``: the same membound rows (labelled ``... hf-model``) on ``transformers.LlamaForCausalLM``
  holding the built-in's tensors (the ``hf`` contender's model): what a user who hands membound the Hugging
  Face class gets, captured from HF's code (its rotary embedding, masks, cache arguments), not the built-in's;
- ``roofline``: N steps x (the bytes a step must read: every weight it streams once + K/V of the live
  context) / the read bandwidth of ``x.sum()`` over 2 GiB measured in this run (so "% roofline" is also
  "% of read bandwidth"). An untied input embedding table is gathered (one row per token), not
  streamed, so it is not counted; a tied one is streamed once, as the head. Quantized rows count their
  own weights: the packed weights and scales of the decode graph plus the float parameters it streams.

For each ``membound triton`` row (and each torch.compile contender) the bench also records the decode step alone,
``step_s`` = (a call of N tokens - a call of N/2) / (N - N/2) (the prefill cancels; the median over interleaved
pairs of calls, ``step_seconds``), printed with its % of
read bandwidth (the comparison that holds when a long prompt's prefill dominates the call); for membound
rows beside the cost model's prediction of the step and
of the whole call (``predicted_step_s``, ``predicted_call_s``: ``membound.step_prediction.predict_generate``
on this card at this run's read bandwidth), and prints both after the table: the check of issue 13's
"predicted vs measured decode step within 20%".

Correctness first: each contender's cold call (N tokens if it compiles, else 16) must give the eager
model's first 16 greedy tokens (bf16 may diverge after a few: the first divergence is reported, not
fatal). Then one warm call if it compiles, then the timed call between ``torch.cuda.synchronize()``s.
The timed region is the whole generate call (prefill + N tokens) for every contender. tokens/s =
batch * N / seconds; GB/s = roofline bytes / seconds; compile s = cold call - timed call, with fresh
Inductor/Triton/membound cache folders (``--warm-caches`` keeps the usual ones).

Contenders run in the order given (default eager, membound, compile, hf: the long compiles last). One
that raises is recorded as ``failed: <first line>``; the bench never stops on one. Rows are written to
the JSON file as they finish (a run cut short keeps what it measured); ``--budget-s`` (GPU default
510) skips the contenders that would start later than that.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "benches")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from static_cache_llama import StaticCacheLlama, quantize_int8  # noqa: E402

import membound  # noqa: E402
from benches._results import gpu_slug  # noqa: E402
from benches._timing import paired_calls  # noqa: E402
from membound.models import build_model, get_config  # noqa: E402
from membound.models.llama import Llama, LlamaConfig  # noqa: E402

Generate = Callable[[torch.Tensor, int], torch.Tensor]  # (ids [B, P], n) -> [B, P + n]
# default run order: the long compiles last (--budget-s)
CONTENDERS = ("eager", "membound", "membound-hf", "compile", "compile-int8", "hf")
CHECK_TOKENS = 16  # greedy tokens compared across contenders


@dataclass
class Row:
    """One (model, batch, contender) measurement; ``status`` is ok, ``failed: ...`` or ``skipped: ...``."""

    model: str
    batch: int
    contender: str
    status: str = "ok"
    tokens_per_s: Optional[float] = None
    gbps: Optional[float] = None
    pct_roofline: Optional[float] = None  # = % of the measured read bandwidth
    pct_copy: Optional[float] = None  # = % of the measured copy bandwidth (read + write of a D2D copy)
    timed_s: Optional[float] = None
    first_call_s: Optional[float] = None
    compile_s: Optional[float] = None  # first call - timed call (compiled contenders only)
    match_prefix: Optional[int] = None  # sum over rows of the greedy prefix equal to eager's
    compared: Optional[int] = None  # batch * tokens compared
    first_divergence: Optional[int] = None  # smallest index where a row differs from eager (None: none)
    deterministic: Optional[bool] = None  # the timed call repeated the cold call's tokens
    wall_s: Optional[float] = None  # everything this row took, compiles included
    note: str = ""
    error: str = ""
    weight_bytes: Optional[int] = None  # bytes a decode step streams, when not the model's (quantized rows)
    # membound triton rows: the decode step measured as (timed call - a call of half the tokens) / the tokens
    # between (prefill excluded), and the cost model's prediction (membound.step_prediction) beside it
    step_s: Optional[float] = None
    predicted_step_s: Optional[float] = None
    predicted_call_s: Optional[float] = None
    predicted_prefill_s: Optional[float] = None
    predicted_launches: Optional[int] = None
    prediction: str = ""


# ---- measuring ---------------------------------------------------------------------------------

def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], Any], reps: int = 20) -> float:
    """Median wall time of ``fn()`` between device synchronisations, after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def read_bandwidth(device: str, nbytes: int) -> float:
    """GB/s of ``x.sum()`` over ``nbytes`` of bf16 (the decode ceiling: weights and cache are read)."""
    x = torch.randn(nbytes // 2, dtype=torch.bfloat16, device=device)
    return nbytes / median_seconds(x.sum) / 1e9


def copy_bandwidth(device: str, nbytes: int) -> float:
    """GB/s of a device-to-device copy of ``nbytes`` (bytes read + bytes written over the time)."""
    src = torch.randn(nbytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / median_seconds(lambda: dst.copy_(src)) / 1e9


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def step_seconds(call: Callable[[int], Any], n: int, reps: int, min_s: float = 2.0) -> float:
    """The decode step alone: (a call of ``n`` tokens - a call of ``n // 2``) / the tokens between (the prefill
    cancels), the median over interleaved pairs of calls (``paired_calls``: at least ``reps`` pairs and ``min_s``
    seconds of them, 30 pairs at most). One pair of calls moved A/B differences of a few percent between runs
    (session 14)."""
    half = n // 2
    fulls, halves = paired_calls(lambda: call(n), lambda: call(half), reps, min_s, sync, most=30)
    return statistics.median((f - h) / (n - half) for f, h in zip(fulls, halves))


def step_bytes_total(weight_bytes: int, kv_bytes_per_token: int, batch: int, prompt: int, new_tokens: int) -> int:
    """Bytes the N forward steps of one generate call must read: step t (t = 0 is the prefill) reads every
    weight once and the K/V of ``prompt + t`` positions of each row."""
    positions = new_tokens * prompt + new_tokens * (new_tokens - 1) // 2
    return new_tokens * weight_bytes + batch * kv_bytes_per_token * positions


def agreement(new: torch.Tensor, ref: torch.Tensor) -> tuple[int, Optional[int]]:
    """(sum of each row's prefix equal to ``ref``, smallest first differing index or None)."""
    k = ref.shape[1]
    same = (new[:, :k].cpu() == ref.cpu())
    prefix = [int(row.long().cumprod(0).sum()) for row in same]
    diverged = [p for p in prefix if p < k]
    return sum(prefix), (min(diverged) if diverged else None)


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_dynamo() -> None:
    """Forget every compiled graph (and CUDA graph pool) and zero Dynamo's counters."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


def cudagraph_skips() -> int:
    """How often Inductor fell back from CUDA graphs since the last ``reset_dynamo`` (0 = graphs were used)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


# ---- contenders --------------------------------------------------------------------------------

def decode_one(model: StaticCacheLlama, tok: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """One greedy step: ``tok [B, 1]`` at ``input_pos [1]`` -> next token ``[B]`` (what torch.compile captures)."""
    return model(tok, input_pos)[:, -1].argmax(dim=-1)


@torch.no_grad()
def static_generate(model: StaticCacheLlama, step: Callable[..., torch.Tensor], ids: torch.Tensor,
                    n: int) -> torch.Tensor:
    """Greedy decode with the static-cache model: eager prefill, then ``step`` per token (gpt-fast's loop)."""
    B, P = ids.shape
    if model.max_batch != B or model.max_len < P + n:
        raise ValueError(f"static_generate: caches are set up for batch {model.max_batch}, {model.max_len} positions; "
                         f"need batch {B}, {P + n} (call setup_caches)")
    tok = model(ids, torch.arange(P, device=ids.device))[:, -1].argmax(dim=-1)
    out = [tok]
    input_pos = torch.tensor([P], device=ids.device)
    for _ in range(n - 1):
        tok = step(model, tok[:, None], input_pos).clone()  # a CUDA-graph output is overwritten by the next replay
        out.append(tok)
        input_pos += 1
    return torch.cat([ids, torch.stack(out, dim=1)], dim=1)


def hf_config(cfg: LlamaConfig, max_positions: int) -> Any:
    from transformers import LlamaConfig as HFLlamaConfig

    hf = HFLlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
                       rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                       max_position_embeddings=max(max_positions, 8192), attention_bias=False, mlp_bias=False,
                       bos_token_id=None, eos_token_id=None, pad_token_id=None)
    rope = getattr(hf, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(hf, "rope_theta", None))
    if theta != cfg.rope_theta:
        raise ValueError(f"hf_config: transformers LlamaConfig kept rope_theta={theta}, wanted {cfg.rope_theta}")
    return hf


def hf_state_dict(model: Llama) -> dict[str, torch.Tensor]:
    """The built-in Llama's tensors under Hugging Face ``LlamaForCausalLM`` names (same layouts: both rotate-half)."""
    names = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
             "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
             "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj", "feed_forward.w2": "mlp.down_proj"}
    out = {}
    for key, t in model.state_dict().items():
        if key == "tok_embeddings.weight":
            out["model.embed_tokens.weight"] = t
        elif key == "norm.weight":
            out["model.norm.weight"] = t
        elif key == "output.weight":
            out["lm_head.weight"] = t
        elif m := re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", key):
            out[f"model.layers.{m[1]}.{names[m[2]]}.weight"] = t
        else:
            raise KeyError(f"hf_state_dict: no Hugging Face name for built-in parameter {key!r}")
    return out


def build_hf(model: Llama, max_positions: int) -> Any:
    """A ``transformers.LlamaForCausalLM`` sharing ``model``'s weight tensors (built on meta, no copy)."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = hf_config(model.config, max_positions)
    device = model.tok_embeddings.weight.device
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False, assign=True)
    if model.config.tie_embeddings:
        hf.lm_head.weight = hf.model.embed_tokens.weight
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise KeyError(f"build_hf: weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    hf.model.rotary_emb = LlamaRotaryEmbedding(config).to(device)  # its inv_freq buffers are not in the state dict
    left = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"build_hf: tensors left on the meta device: {left[:5]}")
    return hf.eval().requires_grad_(False)


def logits_check(ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> dict[str, Any]:
    """Max |difference| relative to max |ref|; tolerance 5e-2 for bf16/fp16 (16-32 layers), 1e-4 for fp32."""
    rel = float((ours.float() - ref.float()).abs().max() / ref.float().abs().max())
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    return {"max_rel_diff": rel, "tolerance": tol, "ok": rel <= tol}


@dataclass
class MemboundVariant:
    label: str
    compile_kwargs: dict[str, Any]
    generate_kwargs: dict[str, Any]
    unavailable: str = ""  # "failed: ..." or "skipped: ..." when it cannot run
    env: Optional[dict[str, str]] = None  # environment while it compiles and runs (MEMBOUND_DECODE_PIPELINE)


# triton+graphs under an environment A/B setting: --membound-backends name -> (label suffix, environment)
ENV_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "triton+graphs+fused": ("decode-fused", {"MEMBOUND_DECODE_PIPELINE": "decode-fused"}),
    "triton+graphs+rope": ("decode-rope", {"MEMBOUND_DECODE_PIPELINE": "decode-rope"}),
    "triton+graphs+fused-rope": ("decode-fused-rope", {"MEMBOUND_DECODE_PIPELINE": "decode-fused-rope"}),
    "triton+graphs+gated": ("gated-down", {"MEMBOUND_LINEAR_GLU": "0"}),
    "triton+graphs+swap": ("swap", {"MEMBOUND_LINEAR_SWAP": "1"}),
    "triton+graphs+noswap": ("noswap", {"MEMBOUND_LINEAR_SWAP": "0"}),
    "triton+graphs+noresident": ("noresident", {"MEMBOUND_LINEAR_RESIDENT": "0"}),
    "triton+graphs+norow": ("norow", {"MEMBOUND_LINEAR_RESIDENT_ROW": "0"}),
    "triton+graphs+row-loop": ("row-loop", {"MEMBOUND_LINEAR_ROW_LOOP": "1"}),
    "triton+graphs+norow-loop": ("norow-loop", {"MEMBOUND_LINEAR_ROW_LOOP": "0"}),
    "triton+graphs+early-kv": ("early-kv", {"MEMBOUND_DECODE_EARLY_KV": "1"}),
    "triton+graphs+swap-early": ("swap-early", {"MEMBOUND_LINEAR_SWAP_EARLY": "1"}),
    "triton+graphs+dv2": ("dv-split-2", {"MEMBOUND_DECODE_DV_SPLIT": "2"}),
    "triton+graphs+dv4": ("dv-split-4", {"MEMBOUND_DECODE_DV_SPLIT": "4"}),
}


def membound_variants(backends: list[str], schemes: tuple[str, ...] = ()) -> list[MemboundVariant]:
    """reference; triton if it resolves; a CUDA-graph variant if membound exposes an option for one; then the
    last of those once per quantization scheme."""
    from membound.backends import BACKENDS, resolve_backend

    out = []
    for name in backends:
        if name == "reference":
            out.append(MemboundVariant("membound reference", {"backend": "reference"}, {}))
        elif name == "triton":
            try:
                resolve_backend("triton")
                out.append(MemboundVariant("membound triton", {"backend": "triton", "cuda_graphs": False}, {}))
            except Exception as exc:  # noqa: BLE001 (being written: record, never crash)
                out.append(MemboundVariant("membound triton", {}, {}, f"failed: {first_line(exc)}"))
        elif name == "triton+graphs":
            out.append(graphs_variant(BACKENDS))
        elif name in ENV_VARIANTS:
            base = graphs_variant(BACKENDS)
            suffix, env = ENV_VARIANTS[name]
            out.append(MemboundVariant(f"{base.label} {suffix}", base.compile_kwargs, {}, base.unavailable,
                                       env=dict(env)))
        else:
            raise ValueError(f"--membound-backends: unknown {name!r}; use reference, triton, triton+graphs, "
                             f"{', '.join(ENV_VARIANTS)}")
    # the quantized rows build on the last variant without an environment A/B (decode-fused, gated-down)
    base = next((v for v in reversed(out) if not v.env), out[-1] if out else None)
    for scheme in schemes:
        if base is None:
            raise ValueError("--quantize needs a membound backend (--membound-backends) to quantize")
        out.append(MemboundVariant(f"{base.label} {scheme}", dict(base.compile_kwargs, quantize=scheme), {},
                                   base.unavailable))
    return out


def streamed_bytes_graph(compiled: Any) -> int:
    """Bytes of the parameters membound's decode graph streams: every parameter except tables read only by
    ``embedding`` gathers."""
    graph = compiled._kv_program.decode_graph
    users: dict[str, set[str]] = {}
    for node in graph.nodes:
        for v in node.inputs:
            if v.kind == "param":
                users.setdefault(v.name, set()).add(node.op)
    total = 0
    for p in graph.params:
        t = graph.tensors.get(p.name)
        if t is not None and users.get(p.name, set()) - {"embedding"}:
            total += t.numel() * t.element_size()
    return total


def streamed_bytes_static(model: StaticCacheLlama) -> int:
    """Bytes the int8 static-cache model streams per step: its linears' int8 weights and scales, the norms."""
    total = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name == "tok_embeddings.weight" or "cache" in name or name.startswith("rope_") or name == "causal_mask":
            continue
        total += t.numel() * t.element_size()
    return total


def graphs_variant(backends: tuple[str, ...]) -> MemboundVariant:
    """The triton backend with generate()'s decode steps replayed as CUDA graphs (compile(cuda_graphs=True))."""
    label = "membound triton+graphs"
    try:
        import membound.backends.cuda_graphs  # noqa: F401
        resolve = membound.backends.resolve_backend
        resolve("triton")
    except Exception as exc:  # noqa: BLE001 (record, never crash)
        return MemboundVariant(label, {}, {}, f"failed: {first_line(exc)}")
    return MemboundVariant(label, {"backend": "triton", "cuda_graphs": True}, {})


# ---- the run -----------------------------------------------------------------------------------

class Bench:
    """Runs the contenders and appends rows; the result file is rewritten after every row."""

    def __init__(self, args: argparse.Namespace, device: str, dtype: torch.dtype, targets: list[Path]) -> None:
        self.args = args
        self.device = device
        self.dtype = dtype
        self.targets = targets
        self.start = time.perf_counter()
        self.rows: list[Row] = []
        self.models: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.record: dict[str, Any] = {}

    def over_budget(self) -> bool:
        return bool(self.args.budget_s) and time.perf_counter() - self.start > self.args.budget_s

    def add(self, row: Row) -> None:
        self.rows.append(row)
        flag = row.status if row.status != "ok" else f"{row.tokens_per_s:.1f} tok/s"
        print(f"[{time.perf_counter() - self.start:6.1f}s] {row.model} b{row.batch} {row.contender}: {flag}",
              flush=True)
        self.save()

    def save(self) -> None:
        self.record.update(models=self.models, notes=self.notes, rows=[asdict(r) for r in self.rows])
        for path in self.targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.record, indent=1) + "\n")

    def flag_cudagraph_skips(self) -> None:
        """Note on the last row when Inductor did not use CUDA graphs (a silent 'reduce-overhead' fallback)."""
        skips = cudagraph_skips()
        if skips and self.device == "cuda":
            self.rows[-1].note += f"; Inductor skipped CUDA graphs {skips}x (see the log)"
            self.save()

    def measure(self, model: str, batch: int, contender: str, gen: Generate, ids: torch.Tensor,
                ref: torch.Tensor, warm_calls: int, compiled: bool, info: dict[str, Any], note: str = "",
                weight_bytes: Optional[Callable[[], int]] = None) -> None:
        """Cold call, warm calls, timed call of ``gen``; a failure becomes a ``failed:`` row.

        The cold call generates N tokens for a compiled contender (so its compile-time shapes are the
        timed ones) and only the compared tokens otherwise (eager and the reference backend need no warm-up
        beyond that)."""
        row = Row(model, batch, contender, note=note)
        if self.over_budget():
            row.status = f"skipped: time budget ({self.args.budget_s:.0f} s) spent"
            self.add(row)
            return
        n, P, k = self.args.new_tokens, ids.shape[1], ref.shape[1]
        cold_n = n if compiled else k  # a compiled contender's first call must see the timed call's shapes
        t0 = time.perf_counter()
        try:
            cold, row.first_call_s = timed(lambda: gen(ids, cold_n))
            for _ in range(warm_calls):
                gen(ids, n)
            out, row.timed_s = timed(lambda: gen(ids, n))
            if tuple(out.shape) != (batch, P + n) or tuple(cold.shape) != (batch, P + cold_n):
                raise RuntimeError(f"generated shapes {tuple(cold.shape)} (cold), {tuple(out.shape)} (timed); "
                                   f"expected {(batch, P + cold_n)}, {(batch, P + n)}")
            row.deterministic = bool(torch.equal(cold[:, :P + k], out[:, :P + k]))
            row.match_prefix, row.first_divergence = agreement(cold[:, P:], ref)
            row.compared = ref.numel()
            row.tokens_per_s = batch * n / row.timed_s
            streamed = weight_bytes() if weight_bytes is not None else info["weight_bytes"]
            if weight_bytes is not None:
                row.weight_bytes = streamed
            nbytes = step_bytes_total(streamed, info["kv_bytes_per_token"], batch, P, n)
            row.gbps = nbytes / row.timed_s / 1e9
            row.pct_roofline = 100 * row.gbps / self.record["read_bandwidth_gbps"]
            if self.record.get("copy_bandwidth_gbps"):
                row.pct_copy = 100 * row.gbps / self.record["copy_bandwidth_gbps"]
            if compiled:
                row.compile_s = row.first_call_s - row.timed_s
                if contender.startswith("compile") and n >= 4:
                    # the decode step alone, as membound's rows measure it (the prefill cancels): compare
                    # contenders by step where the prefill dominates the call (long prompts). Only the compile
                    # contenders: their static cache is sized once per batch, so a shorter call reuses the
                    # compiled step (HF's static cache is sized per call: a shorter call would recompile)
                    row.step_s = step_seconds(lambda k: gen(ids, k), n, self.args.step_reps)
        except Exception as exc:  # noqa: BLE001 (one contender's failure must not end the bench)
            row.status = f"failed: {first_line(exc)}"
            row.error = traceback.format_exc()[-3000:]
        row.wall_s = time.perf_counter() - t0
        self.add(row)

    def run_model(self, name: str) -> None:
        args, device, dtype = self.args, self.device, self.dtype
        cfg = get_config(name)
        if not isinstance(cfg, LlamaConfig):
            raise ValueError(f"--models: {name!r} is not a Llama; this bench runs built-in Llama shapes")
        P, n = args.prompt, args.new_tokens
        k = min(CHECK_TOKENS, n)
        t0 = time.perf_counter()
        model = build_model(name, dtype=dtype, device=device)
        itemsize = torch.empty((), dtype=dtype).element_size()
        info: dict[str, Any] = {
            # what a step must stream: an untied input embedding is gathered (a row per token), not streamed
            "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters())
            - (0 if cfg.tie_embeddings else model.tok_embeddings.weight.numel() * itemsize),
            "roofline_formula": "N * weight_bytes + B * kv_bytes_per_token * (N * P + N * (N - 1) / 2) bytes "
                                "over N steps (the prefill counts as one step reading the prompt's K/V), "
                                "weight_bytes = all parameters - the gathered input embedding (untied)",
            "kv_bytes_per_token": 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * itemsize,
            "embedding_bytes_gathered_not_streamed": 0 if cfg.tie_embeddings else
            model.tok_embeddings.weight.numel() * itemsize,
            "build_s": time.perf_counter() - t0, "checks": {}}
        self.models[name] = info
        static = StaticCacheLlama.from_builtin(model)
        gen_cpu = torch.Generator().manual_seed(1234)
        prompts = {b: torch.randint(1, cfg.vocab_size, (b, P), generator=gen_cpu).to(device) for b in args.batches}
        with torch.no_grad():  # the static-cache model's prefill logits == the built-in model's
            probe = torch.randint(1, cfg.vocab_size, (2, 9), generator=gen_cpu).to(device)
            static.setup_caches(2, 16)
            info["checks"]["static_vs_builtin_logits"] = logits_check(static(probe, torch.arange(9, device=device)),
                                                                      model(probe), dtype)
        refs = {}
        for b in args.batches:  # the eager static-cache model's first greedy tokens: what every contender must match
            static.setup_caches(b, P + n)
            refs[b] = static_generate(static, decode_one, prompts[b], k)[:, P:].cpu()

        for contender in args.contenders:
            if contender == "eager":
                for b in args.batches:
                    static.setup_caches(b, P + n)
                    self.measure(name, b, "eager", lambda ids, m: static_generate(static, decode_one, ids, m),
                                 prompts[b], refs[b], 0, False, info)
            elif contender == "compile":
                self.run_compile(name, static, prompts, refs, info)
            elif contender == "compile-int8":
                int8 = quantize_int8(StaticCacheLlama.from_builtin(model))
                self.run_compile(name, int8, prompts, refs, info, label="compile-int8",
                                 weight_bytes=lambda m=int8: streamed_bytes_static(m))
                del int8
            elif contender == "hf":
                self.run_hf(name, model, prompts, refs, info)
            elif contender in ("membound", "membound-hf"):
                for variant in membound_variants(args.membound_backends, args.quantize):
                    self.run_membound(name, model, variant, prompts, refs, info, hf=contender == "membound-hf")
                    free_memory()  # the variant's compiled model (merged weights) is gone with its frame
            free_memory()
        for b in args.batches:
            roof_s = step_bytes_total(info["weight_bytes"], info["kv_bytes_per_token"], b, P, n) / (
                self.record["read_bandwidth_gbps"] * 1e9)
            self.add(Row(name, b, "roofline", tokens_per_s=b * n / roof_s, gbps=self.record["read_bandwidth_gbps"],
                         pct_roofline=100.0, timed_s=roof_s, note="weights once + live K/V per step at read bw"))

    def run_compile(self, name: str, static: StaticCacheLlama, prompts: dict[int, torch.Tensor],
                    refs: dict[int, torch.Tensor], info: dict[str, Any], label: str = "compile",
                    weight_bytes: Optional[Callable[[], int]] = None) -> None:
        """gpt-fast: the one-token step under reduce-overhead (one CUDA graph), compiled afresh per batch."""
        import torch._inductor.config as inductor_config

        P, n = self.args.prompt, self.args.new_tokens
        tuning = bool(self.args.cd_tuning)
        note = f"decode step compiled, prefill eager; coordinate_descent_tuning={tuning}"
        saved = inductor_config.coordinate_descent_tuning
        inductor_config.coordinate_descent_tuning = tuning  # gpt-fast turns it on; slower to compile
        try:
            for b in self.args.batches:
                static.setup_caches(b, P + n)
                reset_dynamo()
                step = torch.compile(decode_one, mode="reduce-overhead", fullgraph=True)
                self.measure(name, b, label, lambda ids, m, step=step: static_generate(static, step, ids, m),
                             prompts[b], refs[b], 1, True, info, note=note, weight_bytes=weight_bytes)
                self.flag_cudagraph_skips()
        finally:
            inductor_config.coordinate_descent_tuning = saved
            reset_dynamo()

    def run_hf(self, name: str, model: Llama, prompts: dict[int, torch.Tensor], refs: dict[int, torch.Tensor],
               info: dict[str, Any]) -> None:
        P, n = self.args.prompt, self.args.new_tokens
        try:
            hf = build_hf(model, P + n)
            probe = prompts[self.args.batches[0]][:1, :12]
            with torch.no_grad():
                check = logits_check(hf(probe).logits, model(probe), self.dtype)
        except Exception as exc:  # noqa: BLE001
            for b in self.args.batches:
                self.add(Row(name, b, "hf", status=f"failed: {first_line(exc)}", error=traceback.format_exc()[-3000:]))
            return
        info["checks"]["hf_vs_builtin_logits"] = check
        note = "" if check["ok"] else f"LOGITS DIFFER from the built-in (rel {check['max_rel_diff']:.2g})"

        def gen(ids: torch.Tensor, m: int) -> torch.Tensor:
            with torch.no_grad():
                return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=m, min_new_tokens=m,
                                   do_sample=False, cache_implementation="static", pad_token_id=0)

        for b in self.args.batches:
            reset_dynamo()  # HF compiles per batch from scratch, like the compile contender
            self.measure(name, b, "hf", gen, prompts[b], refs[b], 1, self.device == "cuda", info, note=note)
            self.flag_cudagraph_skips()
        reset_dynamo()

    def run_membound(self, name: str, model: Llama, variant: MemboundVariant, prompts: dict[int, torch.Tensor],
                     refs: dict[int, torch.Tensor], info: dict[str, Any], hf: bool = False) -> None:
        """``variant`` on the built-in model, or (``hf``) on the ``LlamaForCausalLM`` sharing its tensors."""
        saved = {k: os.environ.get(k) for k in variant.env or {}}
        os.environ.update(variant.env or {})  # the decode graph is built at the first generate call
        if hf:
            variant = dataclasses.replace(variant, label=f"{variant.label} hf-model")
        try:
            try:
                target = build_hf(model, self.args.prompt + self.args.new_tokens) if hf else model
            except Exception as exc:  # noqa: BLE001 (never end the bench)
                for b in self.args.batches:
                    self.add(Row(name, b, variant.label, status=f"failed: {first_line(exc)}",
                                 error=traceback.format_exc()[-3000:]))
                return
            self._run_membound(name, target, variant, prompts, refs, info)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _run_membound(self, name: str, model: torch.nn.Module, variant: MemboundVariant,
                      prompts: dict[int, torch.Tensor], refs: dict[int, torch.Tensor], info: dict[str, Any]) -> None:
        if variant.unavailable:
            for b in self.args.batches:
                self.add(Row(name, b, variant.label, status=variant.unavailable))
            return
        try:
            compiled = membound.compile(model, **variant.compile_kwargs)
        except Exception as exc:  # noqa: BLE001
            for b in self.args.batches:
                self.add(Row(name, b, variant.label, status=f"failed: {first_line(exc)}",
                             error=traceback.format_exc()[-3000:]))
            return
        options = variant.generate_kwargs
        warm = 0 if variant.compile_kwargs.get("backend") == "reference" else 1
        note = f"compile{variant.compile_kwargs} generate{options}; one compiled model across batches"
        if variant.env:
            note += "; " + " ".join(f"{k}={v}" for k, v in variant.env.items())
        quantized = variant.compile_kwargs.get("quantize") is not None
        for b in self.args.batches:
            self.measure(name, b, variant.label, lambda ids, m: membound.generate(compiled, ids, m, **options),
                         prompts[b], refs[b], warm, True, info, note=note,
                         weight_bytes=(lambda: streamed_bytes_graph(compiled)) if quantized else None)
            if variant.compile_kwargs.get("backend") == "triton":
                self.step_and_prediction(compiled, b, prompts[b])

    def step_and_prediction(self, compiled: Any, batch: int, ids: torch.Tensor) -> None:
        """Beside the membound row just measured: its decode step (``step_seconds``: a call of N tokens - a call of
        N/2, over the tokens between, the prefill cancels), and the cost model's predicted step and call
        (``membound.step_prediction.predict_generate`` on this card, at the read bandwidth of this run)."""
        row = self.rows[-1]
        n = self.args.new_tokens
        if row.status != "ok" or n < 2 or self.over_budget():
            return
        half = n // 2
        try:
            row.step_s = step_seconds(lambda k: membound.generate(compiled, ids, k), n, self.args.step_reps)
        except Exception as exc:  # noqa: BLE001 (never end the bench)
            row.note += f"; step timing failed: {first_line(exc)}"
        try:
            from membound.cost import Hardware
            from membound.step_prediction import predict_decode_step, predict_generate

            hw, bw = Hardware.detect(), self.record["read_bandwidth_gbps"] * 1e9
            call = predict_generate(compiled, batch, ids.shape[1], n, hardware=hw, bandwidth=bw)
            # the measured steps (half .. n) attend to P + 3n/4 positions on average
            at = ids.shape[1] + half + (n - half) // 2
            step = predict_decode_step(compiled, batch, at, hardware=hw, bandwidth=bw)
            row.predicted_step_s, row.predicted_call_s = step.time_s, call.seconds
            row.predicted_prefill_s, row.predicted_launches = call.prefill.time_s, step.launch_count
            row.prediction = f"{step.mode} on {step.card}, step at T={at}"
        except Exception as exc:  # noqa: BLE001
            row.note += f"; prediction failed: {first_line(exc)}"
        self.save()


# ---- output ------------------------------------------------------------------------------------

def fmt(x: Optional[float], spec: str) -> str:
    """``x`` formatted by ``spec``; None as a "-" of the spec's width."""
    if x is None:
        width = re.match(r"\d*", spec).group()
        return "-".rjust(int(width) if width else 1)
    return format(x, spec)


def table(record: dict[str, Any]) -> str:
    rows = record["rows"]
    width = max([len(r["contender"]) for r in rows] + [9])
    copy = record.get("copy_bandwidth_gbps")
    lines = [f"{record['device']}, read bandwidth {record['read_bandwidth_gbps']:.0f} GB/s, "
             f"copy bandwidth {fmt(copy, '.0f')} GB/s, prompt {record['prompt']}, "
             f"{record['new_tokens']} new tokens, {record['dtype']}; agree = greedy prefix equal to eager's "
             f"(first {min(CHECK_TOKENS, record['new_tokens'])} tokens per row, @ = first divergence)",
             f"{'model':9s} {'b':>2s} {'contender':{width}s} {'tok/s':>9s} {'GB/s':>7s} {'%roof':>6s} {'%copy':>6s} "
             f"{'first s':>8s} "
             f"{'compile s':>9s} {'agree':>12s}"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['model']:9s} {r['batch']:>2d} {r['contender']:{width}s} {r['status'][:90]}")
            continue
        agree = "" if r["compared"] is None else f"{r['match_prefix']}/{r['compared']}"
        if r["first_divergence"] is not None:
            agree += f" @{r['first_divergence']}"
        lines.append(f"{r['model']:9s} {r['batch']:>2d} {r['contender']:{width}s} {r['tokens_per_s']:9.1f} "
                     f"{fmt(r['gbps'], '7.0f')} {fmt(r['pct_roofline'], '6.1f')} {fmt(r.get('pct_copy'), '6.1f')} "
                     f"{fmt(r['first_call_s'], '8.2f')} "
                     f"{fmt(r['compile_s'], '9.1f')} {agree:>12s}")
    stepped = [r for r in rows if r.get("step_s") and r["status"] == "ok"]
    if stepped:
        lines.append("decode step alone (median call - median call of half the tokens, per token between): ms, and "
                     "% of read bandwidth over the bytes a step must read at the average position of those steps")
        for r in stepped:
            info = record.get("models", {}).get(r["model"], {})
            n = record["new_tokens"]
            at = record["prompt"] + n // 2 + (n - n // 2) // 2
            streamed = r.get("weight_bytes") or info.get("weight_bytes")
            pct = "     -"
            if streamed and info.get("kv_bytes_per_token"):
                nbytes = streamed + r["batch"] * info["kv_bytes_per_token"] * at
                pct = f"{100 * nbytes / r['step_s'] / 1e9 / record['read_bandwidth_gbps']:6.1f}"
            lines.append(f"{r['model']:9s} {r['batch']:>2d} {r['contender']:{width}s} step {r['step_s'] * 1e3:7.3f} ms "
                         f"{pct} %")
    predicted = [r for r in rows if r.get("predicted_step_s")]
    if predicted:
        lines.append("cost model (membound.step_prediction) vs measured: decode step ms (measured = (call - call of "
                     "half the tokens) / tokens between; ok = within 20%), whole call ms")
        for r in predicted:
            step, pred = r.get("step_s"), r["predicted_step_s"]
            ratio = f"{pred / step:5.2f}x {'ok' if abs(pred / step - 1) <= 0.2 else 'MISS'}" if step else "    -"
            lines.append(f"{r['model']:9s} {r['batch']:>2d} {r['contender']:{width}s} step {pred * 1e3:7.3f} "
                         f"vs {fmt(step * 1e3 if step else None, '7.3f')} ({ratio}), {r['predicted_launches']} "
                         f"launches; call {r['predicted_call_s'] * 1e3:7.1f} vs {r['timed_s'] * 1e3:7.1f}")
    return "\n".join(lines)


DEFAULT_PROMPT = 128


def result_name(slug: str, date: str, models: list[str], prompt: int, smoke: bool) -> str:
    """The result file's name: the card and date, the models unless both default ones (or a smoke run), and the
    prompt length unless the default 128 (runs of several contexts into one folder kept apart)."""
    suffix = "" if sorted(models) == ["llama-1b", "llama-8b"] or smoke else "-" + "+".join(models)
    suffix += "" if prompt == DEFAULT_PROMPT or smoke else f"-prompt{prompt}"
    return f"decode_e2e-{slug}-{date}{suffix}.json"


def merge(paths: list[str], out: Optional[str]) -> int:
    """Join result files of one card (e.g. llama-1b and llama-8b run in two device calls) into one."""
    records = [json.loads(Path(p).read_text()) for p in paths]
    devices = {r["device"] for r in records}
    if len(devices) != 1:
        print(f"decode_e2e --merge: files come from different cards {sorted(devices)}; never compare across cards",
              file=sys.stderr)
        return 2
    merged = dict(records[0])
    merged["models"] = {k: v for r in records for k, v in r["models"].items()}
    merged["rows"] = [row for r in records for row in r["rows"]]
    merged["notes"] = [n for r in records for n in r["notes"]]
    merged["runs"] = [{"file": Path(p).name, "read_bandwidth_gbps": r["read_bandwidth_gbps"], "date": r["date"]}
                      for p, r in zip(paths, records)]
    merged["args"] = dict(merged["args"], models=list(merged["models"]))
    # "-merged": a run's own file of that card and date keeps its name; with --out the merged table goes only
    # there (the caller names and commits it), else to benches/results, never over an existing file
    fname = f"decode_e2e-{gpu_slug(merged['device'])}-{merged['date']}-merged.json"
    folder = Path(out) if out else ROOT / "benches" / "results"
    target, n = folder / fname, 2
    while target.exists() and target.read_text() != json.dumps(merged, indent=1) + "\n":
        target, n = folder / fname.replace("-merged.json", f"-merged-{n}.json"), n + 1
    targets = [target]
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"wrote {', '.join(map(str, targets))}")
    print(table(merged))
    return 0


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="llama-1b,llama-8b")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt", type=int, default=DEFAULT_PROMPT)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--membound-backends", default="reference,triton,triton+graphs")
    p.add_argument("--quantize", default="",
                   help="comma-separated schemes (int8,int4,fp8): membound triton+graphs rows with quantize=scheme")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for a copy of the result file")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip contenders that would start after this many seconds (GPU default 510)")
    p.add_argument("--warm-caches", action="store_true",
                   help="keep the usual Inductor/Triton/membound caches (default: fresh ones, so compiles are cold)")
    p.add_argument("--step-reps", type=int, default=3,
                   help="the decode step alone: at least this many interleaved pairs of full and half calls, "
                        "and 2 s of them (default 3)")
    p.add_argument("--cd-tuning", action="store_true",
                   help="compile contender: Inductor coordinate_descent_tuning on, as gpt-fast (longer compiles)")
    p.add_argument("--smoke", action="store_true", help="CPU, llama-tiny fp32, b1/b2, 8 tokens (checks the script)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="join result files of one card and print the table")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.batches, args.new_tokens, args.prompt = "llama-tiny", "1,2", 8, 13
        args.contenders, args.membound_backends = "eager,membound,membound-hf,hf", "reference"
    args.models = [m for m in args.models.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.contenders = [c for c in args.contenders.split(",") if c]
    args.membound_backends = [c for c in args.membound_backends.split(",") if c]
    args.quantize = [q for q in args.quantize.split(",") if q]
    unknown = [c for c in args.contenders if c not in CONTENDERS]
    if unknown:
        p.error(f"--contenders: unknown {unknown}; choose from {', '.join(CONTENDERS)}")
    if args.new_tokens < 1 or args.prompt < 1 or not args.batches:
        p.error("--new-tokens and --prompt must be >= 1 and --batches non-empty")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.smoke:
        device, dtype = "cpu", torch.float32
    elif torch.cuda.is_available():
        device, dtype = "cuda", torch.bfloat16
    else:
        print("decode_e2e: needs a CUDA GPU (or --smoke for a CPU run of llama-tiny)", file=sys.stderr)
        return 2
    if args.budget_s is None:
        args.budget_s = 0.0 if args.smoke else 510.0
    if device == "cuda" and not args.warm_caches:
        fresh = tempfile.mkdtemp(prefix="decode_e2e-caches-")
        for var, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton"),
                         ("MEMBOUND_CACHE_DIR", "membound")):
            os.environ[var] = os.path.join(fresh, sub)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    date = datetime.date.today().isoformat()
    fname = result_name(gpu_slug(name), date, args.models, args.prompt, args.smoke)
    targets = [] if args.smoke else [ROOT / "benches" / "results" / fname]
    if args.out:
        targets.append(Path(args.out) / fname)

    bench = Bench(args, device, dtype, targets)
    bw = read_bandwidth(device, (2 << 30) if device == "cuda" else (64 << 20))
    copy_bw = copy_bandwidth(device, (1 << 30) if device == "cuda" else (16 << 20))
    free_memory()
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    for mod in ("triton", "transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    bench.record = {"bench": "decode_e2e", "device": name, "date": date, "smoke": args.smoke, "dtype": str(dtype),
                    "prompt": args.prompt, "new_tokens": args.new_tokens, "versions": versions,
                    "read_bandwidth_gbps": bw, "copy_bandwidth_gbps": copy_bw,
                    "cold_caches": device == "cuda" and not args.warm_caches,
                    "args": {k: v for k, v in vars(args).items() if k != "merge"},
                    "method": __doc__.split("\n\n", 2)[2].strip()}
    print(f"decode_e2e on {name}: read bandwidth {bw:.0f} GB/s, copy bandwidth {copy_bw:.0f} GB/s", flush=True)
    for model_name in args.models:
        try:
            bench.run_model(model_name)
        except Exception as exc:  # noqa: BLE001 (e.g. out of memory building the model: keep the other models)
            bench.notes.append(f"{model_name}: failed: {first_line(exc)}")
            bench.add(Row(model_name, 0, "model", status=f"failed: {first_line(exc)}",
                          error=traceback.format_exc()[-3000:]))
        free_memory()  # the model's weights went with run_model's frame
    bench.record["total_s"] = time.perf_counter() - bench.start
    bench.save()
    print(f"wrote {', '.join(map(str, targets)) or '(nothing)'}; total {bench.record['total_s']:.0f} s")
    print(table(bench.record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
