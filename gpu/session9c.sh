#!/usr/bin/env bash
# Session 9: flash-decoding at short contexts by MIN_TILES (benches/experiments/decode_short_context.py), then
# benches/attention.py --quick (prefill with the unmasked full-tile loop and 4 warps at D = 64; decode with the
# accumulator in the dot). About 4 minutes.
#
#   bash gpu/session9c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== decode at short contexts"
timeout 200 python benches/experiments/decode_short_context.py --out "$OUT" >"$OUT/short.log" 2>&1
tail -26 "$OUT/short.log"
echo "== attention --quick ($((SECONDS - start)) s)"
timeout $((560 - SECONDS)) python benches/attention.py --quick --out "$OUT" >"$OUT/attention.log" 2>&1
tail -56 "$OUT/attention.log" | cut -c1-100
echo "($((SECONDS - start)) s)"
