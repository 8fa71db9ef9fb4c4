"""Is a greedy disagreement between membound and HF eager on benches/recurrent_decode.py's bf16 models a bug or bf16?

On the CPU, the full-size config, one 16-token prompt, 3 greedy tokens: HF eager in fp32, HF eager in bf16 (its own
tokens, and its largest logit error against fp32 at the first step beside fp32's top-2 margin there), and membound's
reference backend in fp32, which must equal HF's fp32 tokens.

    PYTHONPATH=. python benches/recurrent_agreement.py qwen3.5-0.8b-like     # about 2 minutes on 2 cores
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import membound  # noqa: E402
from benches.recurrent_decode import MODELS, build  # noqa: E402

PROMPT, NEW = 16, 3


def greedy(model: Any, ids: torch.Tensor) -> torch.Tensor:
    out = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                         attention_mask=torch.ones_like(ids))
    return out[0, PROMPT:]


def main(name: str) -> int:
    m32 = build(MODELS[name], "cpu", torch.float32)
    ids = torch.randint(2, m32.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    t = time.time()
    with torch.no_grad():
        l32, g32 = m32(ids).logits[0, -1], greedy(m32, ids)
    top = l32.topk(2).values
    print(f"{name} fp32 HF tokens {g32.tolist()} top-2 margin {float(top[0] - top[1]):.4f} "
          f"logit std {float(l32.std()):.4f} ({time.time() - t:.0f} s)", flush=True)
    m16 = build(MODELS[name], "cpu", torch.bfloat16)
    with torch.no_grad():
        l16, g16 = m16(ids).logits[0, -1].float(), greedy(m16, ids)
    print(f"{name} bf16 HF tokens {g16.tolist()} max |bf16 - fp32| logit {float((l16 - l32).abs().max()):.4f}",
          flush=True)
    t = time.time()
    compiled = membound.compile(m32, backend="reference")
    with torch.no_grad():
        gm = membound.generate(compiled, ids, NEW)[0, PROMPT:]
    same = torch.equal(gm, g32)
    print(f"{name} membound reference fp32 tokens {gm.tolist()} equal to HF fp32: {same} ({time.time() - t:.0f} s)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "qwen3.5-0.8b-like"))
