#!/usr/bin/env bash
# Session 11, third device call (about 8 minutes): (1) the merged gate/up projection as the decode step runs it
# (linear_glu: in the no-PDL profile of session11b it streamed the 8B weight at 81% of read bandwidth against 94%
# for the lm head) over a grid of register tiles, against cuBLAS + pointwise; (2) flash-decoding at head dim 64
# with 256-slot wide tiles (MEMBOUND_DECODE_WIDE_DIMS=64,128) against the default in generate's graph step at
# short contexts, both in this run; (3) issue 12's 1.24B row at a 4k prompt (LEAST_TILES = 2; cd-tuned
# torch.compile in the same run), then membound alone with the D = 64 wide tiles. Files in one tarball.
#
#   bash gpu/session11c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e" "$W/e2e_wide64" "$W/short0" "$W/short64"
echo "== GLU sweep"
timeout 150 python benches/gemv_sweep.py --batches 1 --shapes gate_up_glu --out "$W" >"$W/glu.log" 2>&1
grep -E "^llama|^m1" "$W/glu.log" | tail -6
for dims in 128 64,128; do
  echo "== short contexts, wide head dims $dims ($((SECONDS - start)) s)"
  MEMBOUND_DECODE_WIDE_DIMS=$dims timeout 90 python benches/experiments/decode_short_context.py \
      --out "$W/short${dims%%,*}" >"$W/short_wide${dims%%,*}.log" 2>&1
  grep -E "^case|^d64" "$W/short_wide${dims%%,*}.log" | cut -c1-75
done
echo "== e2e 1.24B 4k ($((SECONDS - start)) s)"
timeout 170 python benches/decode_e2e.py --models llama-1b --batches 1 --new-tokens 128 --prompt 4096 \
    --contenders membound,compile --membound-backends triton+graphs --cd-tuning --budget-s 140 --out "$W/e2e" \
    >"$W/e2e_ctx4096.log" 2>&1
grep -E "step|tok/s" "$W/e2e_ctx4096.log" | grep -vE "^\[" | tail -6
echo "== e2e 1.24B 4k, D = 64 wide tiles, membound alone ($((SECONDS - start)) s)"
MEMBOUND_DECODE_WIDE_DIMS=64,128 timeout $((560 - SECONDS)) python benches/decode_e2e.py --models llama-1b --batches 1 \
    --new-tokens 128 --prompt 4096 --contenders membound --membound-backends triton+graphs --budget-s 80 \
    --out "$W/e2e_wide64" >"$W/e2e_ctx4096_wide64.log" 2>&1
grep -E "step|tok/s" "$W/e2e_ctx4096_wide64.log" | grep -vE "^\[" | tail -4
tar czf "$OUT/session11c.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
