#!/usr/bin/env bash
# Session 28: the GPU tests that compile one model more than once in a test (graphs against no graphs, backends
# against each other), under tests/conftest.py's export memo (on by default since this session). ~5 min.
#   bash gpu/session28c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 420 python -m pytest -q -n 2 tests/runtime/test_generate_graphs_vs_eager_gpu.py \
    tests/runtime/test_graphs_recurrent_state_gpu.py tests/runtime/test_generate_cuda_graphs_gpu.py \
    tests/backends/test_cuda_graphs.py tests/e2e/test_hf_static_cache.py tests/e2e/test_hf_moe_capture.py \
    tests/runtime/test_lifted_constants_gpu.py > "$W/pytest.log" 2>&1
echo "pytest rc=$? ($((SECONDS - start)) s)"; tail -4 "$W/pytest.log"; grep -E "^FAILED" "$W/pytest.log" | head
tar czf "$OUT/session28c.tgz" -C "$W" .
