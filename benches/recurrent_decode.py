"""Decode of recurrent hybrids (a matrix state per head beside or instead of attention): HF eager and membound on the
same weights, one run.

    PYTHONPATH=. python benches/recurrent_decode.py --out DIR          # GPU: qwen3.5-0.8b-like, mamba2-780m-like
    python benches/recurrent_decode.py --smoke --out DIR               # CPU, tiny fp32 configs (checks the script)

Models (Hugging Face classes, bf16, random weights, configs below; ``--models`` picks): ``qwen3.5-0.8b-like``
(Qwen3.5 text: 24 layers, three gated-DeltaNet layers to one gated attention layer, 16 value heads of K = V = 128)
and ``mamba2-780m-like`` (48 Mamba-2 layers, 48 heads of 64, N = 128). Per model and batch, every contender
generates ``--new-tokens`` greedy tokens after the same random ``--prompt``-token prompts:

- ``hf eager``: ``model.generate(..., do_sample=False)`` with HF's own cache (its recurrent states; the reference
  PyTorch scans, no ``fla`` / ``mamba_ssm`` kernels are installed);
- ``membound triton`` / ``membound triton+graphs``: ``membound.generate(membound.compile(model, ...), ids, N)``;
  the recurrences run as ``linear_attention_state`` (one kernel a layer and step, the state read and written once);
  ``membound triton+graphs+unfused``: the same with ``MEMBOUND_STATE_INPLACE=0`` (the state through ``where``,
  ``linear_attention`` and ``cache_write``: three passes), an A/B of the in-place step.

There is no torch.compile contender: HF's recurrent caches do not run under ``torch.compile(fullgraph=True)``, and
no hand-written static-cache Qwen3.5 / Mamba-2 exists here (the gpt-fast recipe is Llama's). The note says so.

Each row: the call's median seconds, tokens/s, the decode step alone (``step_s``: the median over interleaved pairs
of calls of (a call of N - a call of N/2) / (N - N/2), so the prefill cancels; at least ``--reps`` pairs and
``--min-seconds`` of them, ``step_s_p10``/``p90`` their spread) and its % of the roofline, ``step_bytes / step_s``
over the read bandwidth of ``x.sum()`` over 2 GiB measured in this run. ``step_bytes`` = the weights a step streams
(every parameter once, less an untied input embedding, which is gathered; a tied one counted once, as the head) +
per row the recurrent states read and written (fp32, ``[K, V]`` a head) + the short convolutions' windows + the
attention layers' K/V of the live context (taken at the prompt + N/2 positions, the middle of the timed steps).
Greedy tokens of membound and HF eager are compared (bf16: a near tie may flip a token; the agreement is recorded
as the tokens each row shares with HF before its first difference, summed over rows). Each later membound contender
is also compared with the first: graphs replay the same kernels, so their tokens must equal the plain run's.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qwen3.5-0.8b-like": ("Qwen3_5ForCausalLM", "Qwen3_5TextConfig", dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3584, num_hidden_layers=24, num_attention_heads=8,
        num_key_value_heads=2, head_dim=256, linear_conv_kernel_dim=4, linear_key_head_dim=128,
        linear_value_head_dim=128, linear_num_key_heads=16, linear_num_value_heads=16, tie_word_embeddings=True,
        layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 6)),
    "mamba2-780m-like": ("Mamba2ForCausalLM", "Mamba2Config", dict(
        vocab_size=50288, hidden_size=1536, num_hidden_layers=48, num_heads=48, head_dim=64, state_size=128,
        n_groups=1, expand=2, conv_kernel=4, chunk_size=256, tie_word_embeddings=True)),
}
SMOKE: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qwen3.5-tiny": ("Qwen3_5ForCausalLM", "Qwen3_5TextConfig", dict(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, linear_conv_kernel_dim=3, linear_key_head_dim=8,
        linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        layer_types=["linear_attention", "full_attention"])),
    "mamba2-tiny": ("Mamba2ForCausalLM", "Mamba2Config", dict(
        vocab_size=97, hidden_size=64, num_hidden_layers=2, num_heads=8, head_dim=16, state_size=4, n_groups=2,
        expand=2, conv_kernel=3, chunk_size=4)),
}


def build(spec: tuple[str, str, dict[str, Any]], device: str, dtype: Any) -> Any:
    import torch
    import transformers as T

    model_cls, config_cls, kw = spec
    torch.manual_seed(0)
    cfg = getattr(T, config_cls)(**kw, pad_token_id=0, eos_token_id=None, bos_token_id=1)
    return getattr(T, model_cls)(cfg).to(device=device, dtype=dtype).eval()


def state_bytes_per_row(model: Any) -> int:
    """Bytes of recurrent state one row carries (fp32 [K, V] per head and the conv windows, in the model's dtype)."""
    cfg = model.config
    elt = model.dtype.itemsize
    if hasattr(cfg, "linear_num_value_heads"):  # gated DeltaNet layers
        n = sum(t == "linear_attention" for t in cfg.layer_types)
        conv = (2 * cfg.linear_num_key_heads * cfg.linear_key_head_dim
                + cfg.linear_num_value_heads * cfg.linear_value_head_dim) * (cfg.linear_conv_kernel_dim - 1)
        return n * (cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4 + conv * elt)
    inner = cfg.num_heads * cfg.head_dim  # Mamba-2
    conv = (inner + 2 * cfg.n_groups * cfg.state_size) * (cfg.conv_kernel - 1)
    return cfg.num_hidden_layers * (cfg.num_heads * cfg.head_dim * cfg.state_size * 4 + conv * elt)


def kv_bytes_per_position(model: Any) -> int:
    cfg = model.config
    if not hasattr(cfg, "linear_num_value_heads"):
        return 0
    n = sum(t == "full_attention" for t in cfg.layer_types)
    return n * 2 * cfg.num_key_value_heads * cfg.head_dim * model.dtype.itemsize


def weight_bytes(model: Any) -> int:
    """Every parameter streamed once, less an untied input embedding (gathered, one row a token)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is emb
    return total if tied else total - emb.numel() * emb.element_size()


def median_call(fn: Callable[[], Any], reps: int, sync: Callable[[], None]) -> tuple[Any, float]:
    times, out = [], None
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3, help="pairs of calls (N and N/2 tokens) at least")
    ap.add_argument("--min-seconds", type=float, default=3.0,
                    help="time each contender's pairs for at least this long (50 pairs at most)")
    ap.add_argument("--contenders",
                    default="hf eager,membound triton,membound triton+graphs,membound triton+graphs+unfused")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny fp32 configs, b1/b2, 4 tokens")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)

    import torch

    import membound
    from benches._results import gpu_slug, write_record
    from benches._timing import paired_calls

    smoke = args.smoke or not torch.cuda.is_available()
    device, dtype = ("cpu", torch.float32) if smoke else ("cuda", torch.bfloat16)
    specs = SMOKE if smoke else {m: MODELS[m] for m in args.models.split(",")}
    batches = [1, 2] if smoke else [int(b) for b in args.batches.split(",")]
    new, prompt = (4, 5) if smoke else (args.new_tokens, args.prompt)
    contenders = args.contenders.split(",")
    if smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        contenders = [c for c in contenders if "graphs" not in c]

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    bandwidth = None
    if device == "cuda":
        x = torch.randn(2 ** 30, dtype=torch.bfloat16, device=device)  # 2 GiB
        _, s = median_call(x.sum, 10, sync)
        bandwidth = 2 ** 31 / s / 1e9
        del x
    date = datetime.date.today().isoformat()
    card = "cpu" if device == "cpu" else gpu_slug(torch.cuda.get_device_name())
    import transformers

    def write(rows: list[dict[str, Any]], final: bool = False) -> list[Path]:
        """The record so far (rewritten after every row, so a run cut short keeps what it measured)."""
        record = {"bench": "recurrent_decode", "device": card, "date": date, "smoke": smoke, "complete": final,
                  "read_bandwidth_gbs": bandwidth,
                  "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                  "models": {m: {"class": s[0], "config": s[2]} for m, s in specs.items()},
                  "roofline": "step_bytes = weights streamed once (an untied input embedding gathered, not counted) "
                              "+ batch * (2 * recurrent state bytes per row + K/V bytes per position * "
                              "(prompt + N/2)); roofline_pct = step_bytes / step_s / read bandwidth of x.sum() "
                              "over 2 GiB",
                  "method": __doc__.split("\n\n")[2], "rows": rows}
        return write_record(record, f"recurrent_decode-{card}-{date}.json", args.out, smoke)

    rows: list[dict[str, Any]] = []
    for name, spec in specs.items():
        model = build(spec, device, dtype)
        wbytes, sbytes, kvb = weight_bytes(model), state_bytes_per_row(model), kv_bytes_per_position(model)
        compiled = {}
        for batch in batches:
            gen = torch.Generator().manual_seed(batch)
            ids = torch.randint(2, model.config.vocab_size, (batch, prompt), generator=gen).to(device)
            # the bytes a decode step must move: weights once, each row's state read and written, the live K/V
            step_bytes = wbytes + batch * (2 * sbytes + kvb * (prompt + new // 2))
            ref = None
            plain = None  # the first membound contender's tokens: graphs replay the same kernels, so must equal them
            for who in contenders:
                row: dict[str, Any] = {"model": name, "batch": batch, "contender": who, "new_tokens": new,
                                       "prompt": prompt, "weight_bytes": wbytes, "state_bytes_per_row": sbytes,
                                       "kv_bytes_per_position": kvb, "step_bytes": step_bytes}
                try:
                    if who == "hf eager":
                        def call(n: int, model: Any = model, ids: Any = ids) -> Any:
                            with torch.no_grad():
                                return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                      attention_mask=torch.ones_like(ids))[:, prompt:]
                    else:
                        graphs = "+graphs" in who
                        # "+unfused": the state read / stepped / written by three ops (MEMBOUND_STATE_INPLACE=0),
                        # an A/B of linear_attention_state in the same run (the env is read when generate builds
                        # the decode graph: the warm-up call below)
                        unfused = who.endswith("+unfused")
                        if unfused:
                            os.environ["MEMBOUND_STATE_INPLACE"] = "0"
                        if who not in compiled:
                            t = time.perf_counter()
                            compiled[who] = membound.compile(model, backend="triton", cuda_graphs=graphs)
                            row["compile_s"] = round(time.perf_counter() - t, 2)
                        c = compiled[who]

                        def call(n: int, c: Any = c, ids: Any = ids) -> Any:
                            with torch.no_grad():
                                return membound.generate(c, ids, n)[:, prompt:]
                    t = time.perf_counter()
                    first = call(new)  # warm-up (compiles, autotunes, captures)
                    sync()
                    row["first_call_s"] = round(time.perf_counter() - t, 3)
                    os.environ.pop("MEMBOUND_STATE_INPLACE", None)
                    fulls, halves = paired_calls(lambda: call(new), lambda: call(new // 2), args.reps,
                                                 args.min_seconds, sync, most=50)
                    full = statistics.median(fulls)
                    steps = sorted((f - h) / (new - new // 2) for f, h in zip(fulls, halves))
                    step = statistics.median(steps)
                    row.update(seconds=full, tok_s=batch * new / full, step_s=step, pairs=len(steps),
                               step_s_p10=steps[len(steps) // 10], step_s_p90=steps[-1 - len(steps) // 10])
                    if bandwidth is not None and step > 0:
                        row["roofline_pct"] = 100 * step_bytes / step / 1e9 / bandwidth
                    # agreement: tokens each row shares with the reference before its first difference, summed
                    if ref is None:
                        ref = first
                    else:
                        same = (first.cpu() == ref.cpu()).long().cumprod(1).sum(1)
                        row["tokens_agreeing_with_" + contenders[0].replace(" ", "_")] = int(same.sum())
                    if who.startswith("membound"):
                        if plain is None:
                            plain = (who, first)
                        else:
                            same = (first.cpu() == plain[1].cpu()).long().cumprod(1).sum(1)
                            row["tokens_agreeing_with_" + plain[0].replace(" ", "_")] = int(same.sum())
                    row["status"] = "ok"
                except Exception as exc:  # noqa: BLE001 (recorded, the bench goes on)
                    row.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                               traceback=traceback.format_exc()[-1500:])
                rows.append(row)
                write(rows)
                print(f"{name:18s} b{batch:<3d} {who:24s} {row['status']:6s} "
                      f"{row.get('tok_s', 0):9.1f} tok/s  step {1e3 * row.get('step_s', 0):7.3f} ms  "
                      f"{row.get('roofline_pct', 0):5.1f}% roofline  {row.get('error', '')[:80]}", flush=True)
        model = compiled = None  # (freed before the next model is built)
        if device == "cuda":
            torch.cuda.empty_cache()
    for path in write(rows, final=True):
        print(f"wrote {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
