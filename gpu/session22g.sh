#!/usr/bin/env bash
# Session 22's gpt-oss A/B (one H100 or H200, under 10 minutes): benches/gpt_oss.py --quick (gpt-oss-20b's shape,
# 4 layers, batch 1 and 8, membound against HF eager) with session 21's fused experts (one moe a layer), then the
# same bench from session 21's start commit 515b341 (experts as two grouped_mm a layer; base21/ is `git archive
# 515b341`, not committed), then, time allowing, the fused experts read in place (MEMBOUND_MOE_COPY_SHARE=0).
# Results under $OUT (gpt_oss-*.log, now/, base/, inplace/).
#
#   git archive 515b341 membound benches pyproject.toml | tar -x -C base21 && bash gpu/session22g.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
mkdir -p "$OUT/now" "$OUT/base" "$OUT/inplace"
echo "== gpt-oss, fused experts"
timeout 230 python benches/gpt_oss.py --quick --budget-s 170 --out "$OUT/now" >"$OUT/gpt_oss-now.log" 2>&1
echo "rc $? ($((SECONDS - start)) s)"
echo "== gpt-oss, session 21's start (experts unfused)"
(cd base21 && PYTHONPATH=$PWD timeout 230 python benches/gpt_oss.py --quick --budget-s 170 --out "$OUT/base" \
    >"$OUT/gpt_oss-base.log" 2>&1)
echo "rc $? ($((SECONDS - start)) s)"
if (( SECONDS - start < 400 )); then
  echo "== gpt-oss, fused experts read in place"
  MEMBOUND_MOE_COPY_SHARE=0 timeout $((570 - (SECONDS - start))) python benches/gpt_oss.py --quick --budget-s 100 \
      --out "$OUT/inplace" >"$OUT/gpt_oss-inplace.log" 2>&1
  echo "rc $? ($((SECONDS - start)) s)"
fi
for f in now base inplace; do
  echo "== $f"; grep -E "^  20b|in place|Error" "$OUT/gpt_oss-$f.log" 2>/dev/null | tail -5
done
