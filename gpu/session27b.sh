#!/usr/bin/env bash
# Session 27, after the capture's state restore (cuda_graphs preserve): the new GPU tests, then hf_families on cuda
# (triton backend, graphs on) over the 18 families with recurrent state, then Kimi's bisection default. ~6 min.
#   bash gpu/session27b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 240 python -m pytest -q -x tests/runtime/test_graphs_recurrent_state_gpu.py \
    tests/runtime/test_generate_cuda_graphs_gpu.py tests/backends/test_cuda_graphs.py > "$W/pytest.log" 2>&1
echo "pytest rc=$? ($((SECONDS - start)) s)"; tail -3 "$W/pytest.log"
timeout 300 python benches/hf_families.py --device cuda --backends triton --families mamba falcon-mamba jamba zamba \
    mamba2 bamba nemotron-h falcon-h1 granite-moe-hybrid zamba2 qwen3-next qwen3.5 qwen3.5-moe olmo-hybrid kimi-linear \
    bailing-hybrid recurrent-gemma minimax lfm2 lfm2-moe --out "$W" > "$W/families.log" 2>&1
echo "families rc=$? ($((SECONDS - start)) s)"
grep -E "ok|wrong|error|absent" "$W/families.log" | grep -v "^\[" | cut -c1-160
tar czf "$OUT/session27b.tgz" -C "$W" .
