#!/usr/bin/env bash
# Session 13, the last device call (about 9 minutes): (1) decode_e2e at batch 1, 8B and 1.24B, the default build
# (resident tiles only on weights of at most 8M values: the 1.24B q/k/v and o) against the resident tiles off and
# the cd-tuned torch.compile; (2) benches/experiments/flash_prefill_hopper.py (TMA descriptors, warp
# specialisation, two-loop causal, against our kernel and SDPA). One tarball + the flash files.
#
#   bash gpu/session13f.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e"
echo "== e2e b1 ($((SECONDS - start)) s)"
timeout 270 python benches/decode_e2e.py --models llama-8b,llama-1b --batches 1 \
    --contenders membound,compile --membound-backends triton+graphs,triton+graphs+noresident --cd-tuning \
    --budget-s 230 --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -16
tar czf "$OUT/session13f.tgz" -C "$W" . && rm -rf "$W"
echo "== flash prefill experiment ($((SECONDS - start)) s)"
timeout $((520 - SECONDS)) python benches/experiments/flash_prefill_hopper.py --out "$OUT" --budget-s $((450 - SECONDS)) \
    >"$OUT/flash_hopper.log" 2>&1
echo "rc $?"
grep -vE "^\s|Traceback|^[A-Za-z]+Error|UserWarning|warn_once" "$OUT/flash_hopper.log" | tail -30
echo "($((SECONDS - start)) s)"
