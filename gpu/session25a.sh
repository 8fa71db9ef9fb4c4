#!/usr/bin/env bash
# Session 25 (replaces gpu/session24b.sh, which never ran: no device). About 5 minutes on one H100:
#   1. GPU tests: the lifted-constant fix (Gemma 3n), the state-space decode (Mamba's and Mamba-2's linear_scan and
#      ring states, compiled) and the linear_scan kernel against its reference;
#   2. families on cuda, both backends, 4 processes: Gemma 3n (the fix), Mamba / FalconMamba / Jamba / LFM2-MoE
#      (session 24's states), the Mamba-2 families and the gated-DeltaNet families (session 25).
# One tarball; the tables last.
#
#   bash gpu/session25a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
timeout 200 python -m pytest -q -rfE -p no:cacheprovider tests/runtime/test_lifted_constants_gpu.py \
    tests/backends/test_state_space_decode.py tests/backends/test_scan_kernel.py >"$W/tests.log" 2>&1
echo "GPU tests rc $? ($((SECONDS - start)) s)"; tail -1 "$W/tests.log"
fams=(gemma3n mamba falcon-mamba jamba lfm2-moe mamba2 bamba nemotron-h falcon-h1 granite-moe-hybrid zamba2
      qwen3-next qwen3.5 qwen3.5-moe olmo-hybrid kimi-linear recurrent-gemma minimax)
timeout 300 python benches/hf_families.py --device cuda --families gemma3n mamba falcon-mamba --out "$W/hf0" >"$W/hf0.log" 2>&1 &
timeout 300 python benches/hf_families.py --device cuda --families jamba lfm2-moe mamba2 --out "$W/hf1" >"$W/hf1.log" 2>&1 &
timeout 300 python benches/hf_families.py --device cuda --families bamba nemotron-h falcon-h1 --out "$W/hf2" >"$W/hf2.log" 2>&1 &
timeout 300 python benches/hf_families.py --device cuda --families granite-moe-hybrid zamba2 recurrent-gemma --out "$W/hf3" >"$W/hf3.log" 2>&1 &
timeout 300 python benches/hf_families.py --device cuda --families qwen3-next qwen3.5 minimax --out "$W/hf4" >"$W/hf4.log" 2>&1 &
timeout 300 python benches/hf_families.py --device cuda --families qwen3.5-moe olmo-hybrid kimi-linear --out "$W/hf5" >"$W/hf5.log" 2>&1 &
wait
tar czf "$OUT/session25a.tgz" -C "$W" .
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10
echo "hf_families: $(cat "$W"/hf?.log | grep -cE '^[a-z0-9.-]+ +(reference|triton) +ok ') of $((${#fams[@]} * 2)) runs ok"
grep -hE '^[a-z0-9.-]+ +(reference|triton) +(error|wrong)' "$W"/hf?.log | cut -c1-200
echo "($((SECONDS - start)) s)"
