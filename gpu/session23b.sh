#!/usr/bin/env bash
# Left by session 22 for a GPU call (about 5 minutes on one H100): gpt-oss's experts read in place
# (MEMBOUND_MOE_COPY_SHARE=0, what fuse-moe does where the [E, N, K] copies would not fit) with the paired gate/up
# load (MEMBOUND_MOE_INPLACE_PAIRS=1, the default since session 22, untimed) against the stride-2 loads (=0; session
# 22's H100 run: 740 tok/s at batch 1, 2949 at batch 8, against 1346 and 3771 for the copies).
# Results under $OUT (pairs1/, pairs0/, gpt_oss-*.log).
#
#   bash gpu/session23b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
for pairs in 1 0; do
  mkdir -p "$OUT/pairs$pairs"
  MEMBOUND_MOE_COPY_SHARE=0 MEMBOUND_MOE_INPLACE_PAIRS=$pairs timeout 200 python benches/gpt_oss.py --quick \
      --budget-s 120 --out "$OUT/pairs$pairs" >"$OUT/gpt_oss-pairs$pairs.log" 2>&1
  echo "pairs $pairs: rc $? ($((SECONDS - start)) s)"
done
for pairs in 1 0; do echo "== pairs $pairs"; grep -E "^  20b|Error" "$OUT/gpt_oss-pairs$pairs.log" | tail -4; done
