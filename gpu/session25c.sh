#!/usr/bin/env bash
# Session 25, a short form of gpu/session25a.sh for a nearly spent device budget (about 3 minutes on one H100): the GPU
# tests (lifted constants, state-space decode with linear_attention_state compiled, the scan kernels) and three
# families on cuda, both backends: Gemma 3n (session 24's fix), Mamba-2, Qwen3.5.
#
#   bash gpu/session25c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
timeout 150 python -m pytest -q -rfE -p no:cacheprovider tests/runtime/test_lifted_constants_gpu.py \
    tests/backends/test_state_space_decode.py tests/backends/test_scan_kernel.py >"$W/tests.log" 2>&1 &
timeout 150 python benches/hf_families.py --device cuda --families gemma3n --out "$W/hf0" >"$W/hf0.log" 2>&1 &
timeout 150 python benches/hf_families.py --device cuda --families mamba2 qwen3.5 --out "$W/hf1" >"$W/hf1.log" 2>&1 &
wait
tar czf "$OUT/session25c.tgz" -C "$W" .
tail -1 "$W/tests.log"; grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10
echo "hf_families: $(cat "$W"/hf?.log | grep -cE '^[a-z0-9.-]+ +(reference|triton) +ok ') of 6 runs ok"
grep -hE '^[a-z0-9.-]+ +(reference|triton) +(error|wrong)' "$W"/hf?.log | cut -c1-200
echo "($((SECONDS - start)) s)"
