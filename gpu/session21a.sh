#!/usr/bin/env bash
# Left by session 20 for the next GPU call (about 9 minutes on one H200): does flash decoding's merge tile cost the
# whole kernel its occupancy under the GPU machine's Triton (3.6)? compile_check run with triton 3.6 from PyPI (no GPU)
# put the default 16-row kernels at 255 registers a thread (head dim 64: +12 B of spills), 125-128 with a one-row
# merge (MEMBOUND_DECODE_MERGE_REGS=8). decode_e2e on the 1.24B shape, batch 1, 4096- and 32768-token prompts (issue
# 12's long-context rows: where the kernel's splits and their merge run), and the 8B shape at context 256, batch 1
# (issue 13), membound triton+graphs only, MERGE_REGS 32 (default) against 8, one process each. One tarball; the
# step rows last.
#
#   bash gpu/session21a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
for regs in 32 8; do
  for ctx in 4096 32768; do
    MEMBOUND_DECODE_MERGE_REGS=$regs timeout 80 python benches/decode_e2e.py --models llama-1b --batches 1 \
        --new-tokens 64 --prompt $ctx --contenders membound --membound-backends triton+graphs --budget-s 65 \
        --out "$W/r$regs-$ctx" >"$W/e2e-r$regs-$ctx.log" 2>&1
    echo "regs $regs ctx $ctx: rc $? ($((SECONDS - start)) s)"
  done
  MEMBOUND_DECODE_MERGE_REGS=$regs timeout 80 python benches/decode_e2e.py --models llama-8b --batches 1 \
      --new-tokens 128 --prompt 128 --contenders membound --membound-backends triton+graphs --budget-s 65 \
      --out "$W/r$regs-8b" >"$W/e2e-r$regs-8b.log" 2>&1
  echo "regs $regs 8b: rc $? ($((SECONDS - start)) s)"
done
tar czf "$OUT/work.tgz" -C "$W" .
for f in "$W"/e2e-*.log; do echo "== $(basename "$f")"; grep -E "membound triton\+graphs +step" "$f"; done
