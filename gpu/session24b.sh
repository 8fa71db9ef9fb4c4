#!/usr/bin/env bash
# Session 24, after gpu/session24a.sh (H100: 271 moe kernel tests passed; 19 of 20 family runs ok, Gemma 3n's triton run
# failed on a CPU tensor constant). About 3 minutes on one H100:
#   1. GPU tests: the lifted-constant fix, the state-space decode (Mamba's linear_scan and ring states, compiled) and the
#      linear_scan kernel against its reference;
#   2. families on cuda, both backends, 3 processes: Gemma 3n (the fix), Mamba / FalconMamba / Jamba (scan states),
#      LFM3-less LFM2-MoE (ring states under 5.17).
# One tarball; the tables last. gpu/session23a.sh (divergence margins) is a separate call.
#
#   bash gpu/session24b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
timeout 150 python -m pytest -q -rfE -p no:cacheprovider tests/runtime/test_lifted_constants_gpu.py \
    tests/backends/test_state_space_decode.py tests/backends/test_scan_kernel.py >"$W/tests.log" 2>&1
echo "GPU tests rc $? ($((SECONDS - start)) s)"; tail -1 "$W/tests.log"
fams=(gemma3n mamba falcon-mamba jamba lfm2-moe)
timeout 200 python benches/hf_families.py --device cuda --families gemma3n mamba --out "$W/hf0" >"$W/hf0.log" 2>&1 &
timeout 200 python benches/hf_families.py --device cuda --families falcon-mamba jamba --out "$W/hf1" >"$W/hf1.log" 2>&1 &
timeout 200 python benches/hf_families.py --device cuda --families lfm2-moe --out "$W/hf2" >"$W/hf2.log" 2>&1 &
wait
tar czf "$OUT/session24b.tgz" -C "$W" .
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10
echo "hf_families: $(cat "$W"/hf?.log | grep -cE '^[a-z0-9.-]+ +(reference|triton) +ok ') of $((${#fams[@]} * 2)) runs ok"
grep -hE '^[a-z0-9.-]+ +(reference|triton) +(error|wrong)' "$W"/hf?.log | cut -c1-200
echo "($((SECONDS - start)) s)"
