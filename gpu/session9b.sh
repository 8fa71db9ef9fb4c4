#!/usr/bin/env bash
# Session 9, prefill flash attention (issue #12): the kernel now takes whole key tiles every row sees through
# an unmasked loop (no masked loads, no -inf select, the scale folded into the exponent), accumulates p @ v in
# the dot, and starts a head's longest causal row blocks first. The GPU tests of the attention kernels, then
# benches/experiments/flash_prefill_configs.py (tile configs against SDPA). About 4 minutes.
#
#   bash gpu/session9b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== GPU attention tests"
timeout 100 python -m pytest -q -n 8 -p no:cacheprovider tests/backends/test_attention_kernels.py >"$OUT/attn_tests.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/attn_tests.log" | head -10
tail -1 "$OUT/attn_tests.log"
echo "== flash prefill configs ($((SECONDS - start)) s)"
timeout $((560 - SECONDS)) python benches/experiments/flash_prefill_configs.py --out "$OUT" >"$OUT/flash_configs.log" 2>&1
tail -40 "$OUT/flash_configs.log"
echo "($((SECONDS - start)) s)"
