#!/usr/bin/env bash
# Session 11, third device call (about 6 minutes): (1) the merged gate/up projection as the decode step runs it
# (linear_glu: in the no-PDL profile of session11b it streamed the 8B weight at 81% of read bandwidth against 94%
# for the lm head) over a grid of register tiles, against cuBLAS + pointwise; (2) issue 12's 1.24B row at a
# 4k prompt with LEAST_TILES = 2 (cd-tuned torch.compile in the same run). Files in one tarball.
#
#   bash gpu/session11c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e"
echo "== GLU sweep"
timeout 220 python benches/gemv_sweep.py --batches 1 --shapes gate_up_glu --out "$W" >"$W/glu.log" 2>&1
grep -E "^llama|^m1" "$W/glu.log" | tail -6
echo "== e2e 1.24B 4k ($((SECONDS - start)) s)"
timeout 170 python benches/decode_e2e.py --models llama-1b --batches 1 --new-tokens 128 --prompt 4096 \
    --contenders membound,compile --membound-backends triton+graphs --cd-tuning --budget-s 140 --out "$W/e2e" \
    >"$W/e2e_ctx4096.log" 2>&1
grep -E "step|tok/s" "$W/e2e_ctx4096.log" | grep -vE "^\[" | tail -6
tar czf "$OUT/session11c.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
