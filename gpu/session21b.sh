#!/usr/bin/env bash
# Left by session 20 for a later GPU call (about 5 minutes on one H200): what session 20 built but its GPU calls did
# not reach or left failing on a test's own bound.
#   1. the GPU tests of the session's kernels again: attention sinks (the fixed effect bound), Llama 4's attention
#      chunks (flash-decoding, flash prefill) and its sigmoid-scored, input-weighted moe (both paths, bf16), the
#      attention / MLP block tests (the fixed scope test; the register bound xfails under Triton < 3.7);
#   2. the HF families llama4 (chunked attention, NoPE temperature, fused dense experts) and gpt-oss on the GPU.
# Results under $OUT (tests.log, families.log).
#
#   bash gpu/session21b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== GPU tests"
timeout 200 python -m pytest -q -p no:cacheprovider tests/backends/test_attention_sinks.py \
    "tests/backends/test_attention_kernels.py::test_cached_attention_chunks" \
    "tests/backends/test_attention_kernels.py::test_flash_attention_chunks" \
    "tests/backends/test_attention_kernels.py::test_cached_attention_reads_only_what_it_sees" \
    "tests/backends/test_moe_kernel.py::test_sigmoid_scores_on_the_input" \
    tests/backends/test_attn_block.py tests/backends/test_mlp_block.py >"$OUT/tests.log" 2>&1
echo "rc $?"; tail -5 "$OUT/tests.log"
echo "== families on the GPU ($((SECONDS - start)) s)"
timeout 150 python benches/hf_families.py --device cuda --families llama4 gpt-oss --out "$OUT" >"$OUT/families.log" 2>&1
echo "rc $?"; tail -6 "$OUT/families.log"
echo "($((SECONDS - start)) s)"
