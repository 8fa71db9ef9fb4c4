#!/usr/bin/env bash
# Session 13, first device call (about 6 minutes): (1) benches/experiments/resident_gemv.py -- do decode GEMVs
# whose programs load their whole weight slice before the PDL wait cut the fixed cost a GEMV pays in a CUDA-graph
# chain (1.24B and 8B layer chains, single-shape chains, M = 1)? (2) the swapped tensor-core GEMV's sweep at
# M = 16 (the rule assumes M = 8's picks). One tarball.
#
#   bash gpu/session13a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/sweep"
echo "== resident GEMV experiment"
timeout 200 python benches/experiments/resident_gemv.py --out "$W" >"$W/resident.log" 2>&1
grep -vE "^check" "$W/resident.log" | tail -40
echo "== swap sweep M=16 ($((SECONDS - start)) s)"
timeout $((480 - SECONDS)) python benches/gemv_sweep.py --tensor-cores --swap --tc-batches 16 --models llama-8b,llama-1b \
    --shapes down_plain,gate_up_glu,qkv,o,lm_head --budget-s $((430 - SECONDS)) \
    --out "$W/sweep" >"$W/sweep16.log" 2>&1
grep -E " m16:|bandwidth|skipped" "$W/sweep16.log" | head -16
tar czf "$OUT/session13a.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
