#!/usr/bin/env bash
# Session 31: the prefill flash kernel's full-tile loop forms (FlashConfig.lazy: the accumulator's rescale only when a
# row's max grows by more than 2**8, as FlashAttention-4 does; .ahead: the next tile's q @ K^T issued before this
# tile's softmax) against SDPA and pick_config, B x S = 4 x 4096 and 16 x 1024, D = 64/128, causal and not. ~3 min.
#   bash gpu/session31c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 400 python benches/experiments/flash_prefill_configs.py --loop --out "$W" > "$W/prefill-loop.log" 2>&1
echo "rc=$? ($((SECONDS - start)) s)"
tar czf "$OUT/session31c.tgz" -C "$W" .
grep -vE "^\[" "$W/prefill-loop.log" | tail -32 | cut -c1-140
