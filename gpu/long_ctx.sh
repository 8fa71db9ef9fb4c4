#!/usr/bin/env bash
# Issue 12's end-to-end rows with the one-row GEMVs (session 14), about 9 minutes on one H200: decode_e2e on the
# 1.24B shape at batch 1 with 4096- and 16384-token prompts (128 new tokens), membound's default against the
# cd-tuned torch.compile, each context a run of its own (32768 needs a call of its own: compile's tuning there
# takes most of a call). One tarball.
#
#   bash gpu/long_ctx.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e"
for ctx in 4096 16384; do
  echo "== e2e 1B ${ctx} ($((SECONDS - start)) s)"
  left=$(( (ctx == 4096 ? 280 : 570) - SECONDS ))
  timeout $left python benches/decode_e2e.py --models llama-1b --batches 1 --new-tokens 128 --prompt $ctx \
      --contenders membound,compile --membound-backends triton+graphs --cd-tuning --budget-s $((left - 40)) \
      --out "$W/e2e" >"$W/e2e-$ctx.log" 2>&1
  grep -vE "^\[" "$W/e2e-$ctx.log" | tail -6
done
tar czf "$OUT/long_ctx.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
