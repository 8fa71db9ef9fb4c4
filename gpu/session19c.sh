#!/usr/bin/env bash
# Left by session 18 for a later GPU call (about 8 minutes on one H200), after gpu/session19a.sh and 19b.sh: issue
# 12's long-context rows with the one-launch attention block. decode_e2e on the 1.24B shape at batch 1 with 4096-,
# 16384- and 32768-token prompts (64 new tokens), membound triton+graphs only, the default decode pipeline against
# decode-block (whose attention items split the cache over ~16 programs with pipelined key tiles), one process per
# (context, pipeline). One tarball; the rows last.
#
#   bash gpu/session19c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
for ctx in 4096 16384 32768; do
  for pipe in decode decode-block; do
    MEMBOUND_DECODE_PIPELINE=$pipe timeout 75 python benches/decode_e2e.py --models llama-1b --batches 1 \
        --new-tokens 64 --prompt $ctx --contenders membound --membound-backends triton+graphs --budget-s 60 \
        --out "$W/$pipe-$ctx" >"$W/e2e-$pipe-$ctx.log" 2>&1
    echo "$pipe $ctx: rc $? ($((SECONDS - start)) s)"
  done
done
tar czf "$OUT/work.tgz" -C "$W" .
for ctx in 4096 16384 32768; do
  for pipe in decode decode-block; do
    echo "== $pipe $ctx"; grep -E "^llama.*membound" "$W/e2e-$pipe-$ctx.log" | grep -v step | cut -c1-140
  done
done
