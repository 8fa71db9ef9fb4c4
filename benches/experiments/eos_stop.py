"""What the per-token "has every row finished?" check costs ``compiled.generate`` (issue 13; session 17 made greedy
decoding without a streamer read that flag late instead of stopping the host each token).

    PYTHONPATH=. python benches/experiments/eos_stop.py --models llama-1b --batches 1,8 --new-tokens 256

Per model (HF ``LlamaForCausalLM`` at the built-in config's shape, random weights, compiled once) and batch, three
greedy ``compiled.generate`` calls of ``--new-tokens`` tokens each, timed (median of ``--reps``):

- ``no-eos``: no EOS ids (no check at all: what benches/decode_e2e.py times);
- ``eos-late``: an EOS id the greedy path never emits (the check runs every token, read late: the new default);
- ``eos-streamer``: the same with a no-op streamer, which keeps the per-token check (and adds its own copy of each
  token to the host: what every call paid before session 17).

All three must return the same tokens (checked). Writes JSON to ``--out`` (default ``$OUT``) and prints a table.
``--smoke``: the CPU, llama-tiny, a few tokens (checks the script).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class _NoopStreamer:
    def put(self, value: torch.Tensor) -> None:
        pass

    def end(self) -> None:
        pass


def run(name: str, batches: list[int], new: int, reps: int, device: str, dtype: torch.dtype) -> list[dict]:
    import membound
    from benches.decode_e2e import build_hf
    from membound.models import build_model

    torch.manual_seed(0)
    model = build_model(name, dtype=dtype, device=device)
    hf = build_hf(model, 64 + new).eval()
    vocab = model.config.vocab_size
    compiled = membound.compile(hf)
    rows = []
    for batch in batches:
        ids = torch.randint(1, vocab, (batch, 64), device=device, generator=None)
        free = compiled.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
        seen = set(free[:, 64:].flatten().tolist())
        never = next(t for t in range(vocab - 1, 0, -1) if t not in seen)  # an EOS id the greedy path never emits
        settings = {"no-eos": dict(eos_token_id=None, pad_token_id=0),
                    "eos-late": dict(eos_token_id=never, pad_token_id=0),
                    "eos-streamer": dict(eos_token_id=never, pad_token_id=0, streamer=_NoopStreamer())}
        for label, kw in settings.items():
            times = []
            for _ in range(reps):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = compiled.generate(ids, max_new_tokens=new, do_sample=False, **kw)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            same = bool(torch.equal(out, free))
            med = statistics.median(times)
            rows.append(dict(model=name, batch=batch, setting=label, seconds=med, tokens_per_s=batch * new / med,
                             same_tokens=same))
            print(f"{name:9s} b{batch:<3d} {label:13s} {med * 1e3:9.2f} ms  {batch * new / med:9.1f} tok/s  "
                  f"{'same tokens' if same else 'TOKENS DIFFER'}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="llama-1b")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=os.environ.get("OUT"))
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        models, batches, new, reps, device, dtype = ["llama-tiny"], [1, 2], 6, 1, "cpu", torch.float32
    else:
        models, batches = args.models.split(","), [int(b) for b in args.batches.split(",")]
        new, reps, device, dtype = args.new_tokens, args.reps, "cuda", torch.bfloat16
    rows = []
    for name in models:
        rows += run(name, batches, new, reps, device, dtype)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        with open(Path(args.out) / "eos_stop.json", "w") as f:
            json.dump({"bench": "eos_stop", "device": gpu, "rows": rows}, f, indent=1)
    if not all(r["same_tokens"] for r in rows):
        sys.exit("tokens differ between the settings")


if __name__ == "__main__":
    main()
