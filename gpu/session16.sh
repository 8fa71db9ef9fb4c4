#!/usr/bin/env bash
# Session 16's GPU check, about 8 minutes on one H200: gpu/families.sh (42 HF families on the GPU, the model fuzzer
# over the opt-in families with CUDA graphs, their e2e tests), then every gpu-marked test (the decode kernel's Dv
# split code, constant / full building on CUDA). families.tgz and gpu-tests.log.
#
#   bash gpu/session16.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
bash gpu/families.sh
echo "== gpu-marked tests ($((SECONDS - start)) s)"
timeout 200 python -m pytest -q -rfE -m gpu -n 8 -p no:cacheprovider tests >"$OUT/gpu-tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$OUT/gpu-tests.log" | sort -u | head -10; tail -1 "$OUT/gpu-tests.log"
echo "($((SECONDS - start)) s)"
