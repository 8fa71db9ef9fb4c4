#!/usr/bin/env bash
# Left by session 21 (no GPU was lent) for a GPU call (about 6 minutes on one H200): DeepSeek-V3-style experts over
# the graph's routing (moe_experts), timed for the first time: benches/deepseek_moe.py at DeepSeek-V2-Lite's sizes
# with V3's router (64 experts of I = 1408, top-6, MLA), 4 layers, membound (bf16) and its int8 twin against HF
# eager, batch 1 and 8. No earlier figure to compare with (before session 21 these experts ran as two grouped_mm a
# layer plus the sorts and gathers).
# Results under $OUT (deepseek_moe.log, deepseek_moe-*.json).
#
#   bash gpu/session22c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== DeepSeek-V3-style MoE decode ($((SECONDS - start)) s)"
timeout 330 python benches/deepseek_moe.py --layers 4 --new-tokens 32 --budget-s 250 --out "$OUT" \
    >"$OUT/deepseek_moe.log" 2>&1
echo "rc $?"; grep -E "tok/s|error|wrote" "$OUT/deepseek_moe.log" | tail -12
echo "($((SECONDS - start)) s)"
