#!/usr/bin/env bash
# Session 22's short form of gpu/session21a.sh (the device time left after the MoE calls): flash decoding's merge
# tile, MEMBOUND_DECODE_MERGE_REGS 32 (default) against 8, decode_e2e on the 1.24B shape at batch 1 with 4096- and
# 32768-token prompts, membound triton+graphs only, one process each. One tarball; the step rows last.
#
#   bash gpu/session22r.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
for ctx in 4096 32768; do
  for regs in 32 8; do
    MEMBOUND_DECODE_MERGE_REGS=$regs timeout 85 python benches/decode_e2e.py --models llama-1b --batches 1 \
        --new-tokens 64 --prompt $ctx --contenders membound --membound-backends triton+graphs --budget-s 65 \
        --out "$W/r$regs-$ctx" >"$W/e2e-r$regs-$ctx.log" 2>&1
    echo "regs $regs ctx $ctx: rc $? ($((SECONDS - start)) s)"
  done
done
tar czf "$OUT/work.tgz" -C "$W" .
for f in "$W"/e2e-*.log; do echo "== $(basename "$f")"; grep -E "membound triton\+graphs +step|tok/s" "$f" | tail -3; done
