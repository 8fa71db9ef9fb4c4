#!/usr/bin/env bash
# benches/moe.py with every contender at one shape (issue 11's bench), batches 1 8 32, prefill 512, torch.compile
# contenders with coordinate-descent tuning; first (small shape only) the fused-routing A/B of one moe op.
#   bash gpu/moe_full.sh small | 8x7b-8l
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
shape=$1
if [ "$shape" = small ]; then
    for f in 0 1; do
        MEMBOUND_MOE_FUSED_ROUTING=$f timeout 100 python benches/experiments/moe_decode_tiles.py --tokens 1,8,32 --plans 1 \
            --tag="-fused-routing-$f" --out "$OUT" >"$OUT/moe_ab_$f.log" 2>&1
        echo "fused routing $f:"; grep -E "^T=.*None " "$OUT/moe_ab_$f.log" | tail -3
    done
fi
timeout $((570 - (SECONDS - start))) python benches/moe.py --shapes "$shape" --batches 1 8 32 --cd-tuning \
    --budget-s $((480 - (SECONDS - start))) --out "$OUT" >"$OUT/moe_full_$shape.log" 2>&1
grep -E "tok/s|error|fail" "$OUT/moe_full_$shape.log" | head -40
echo "($((SECONDS - start)) s)"
