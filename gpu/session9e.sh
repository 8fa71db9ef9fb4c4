#!/usr/bin/env bash
# Session 9 (not run: the device budget ran out): the GPU decode tests, then decode_short_context.py --long
# (programs per SM at 4k / 32k) and the short contexts again. About 2 minutes. Meant for the change that lets
# only the programs with slots count in on flash-decoding's merge counter (see the comment in
# _flash_decoding_split); run it before and after that change.
#
#   bash gpu/session9e.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== GPU decode tests"
timeout 120 python -m pytest -q -n 8 -p no:cacheprovider tests/backends/test_decode_variants.py \
    tests/backends/test_attention_kernels.py tests/backends/test_split_stress_gpu.py tests/backends/test_cuda_graphs.py \
    >"$OUT/decode_tests.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/decode_tests.log" | head -10
tail -1 "$OUT/decode_tests.log"
echo "== long ($((SECONDS - start)) s)"
timeout 200 python benches/experiments/decode_short_context.py --long --out "$OUT" >"$OUT/long.log" 2>&1
tail -9 "$OUT/long.log"
echo "== short ($((SECONDS - start)) s)"
timeout 200 python benches/experiments/decode_short_context.py --out "$OUT" >"$OUT/short.log" 2>&1
tail -25 "$OUT/short.log"
echo "($((SECONDS - start)) s)"
