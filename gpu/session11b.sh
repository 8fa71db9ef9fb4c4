#!/usr/bin/env bash
# Session 11, second device call (about 8 minutes): (1) the GPU decode tests with LEAST_TILES = 2 (the device
# split's least chunk, now apart from the grid's MIN_TILES); (2) decode_short_context's LEAST_TILES variants (4 =
# the old rule, 2, 1) and 4096 slots; (3) where the 1.24B and 8B batch-1 steps spend their time, with and without
# programmatic dependent launch (PDL off: each kernel's own duration), for the default decode pipeline and
# decode-fused (the norms and residual adds in the GEMVs: 6 launches a layer, measured slower on 2026-12-02).
# Everything but the tables goes into one tarball (the device returns at most 8 files a call).
#
#   bash gpu/session11b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
echo "== GPU decode tests"
timeout 150 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/backends/test_decode_launches.py \
    tests/backends/test_triton_split_decoding.py tests/backends/test_decode_variants.py >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== short contexts, LEAST_TILES variants ($((SECONDS - start)) s)"
timeout 120 python benches/experiments/decode_short_context.py --out "$W" >"$W/short.log" 2>&1
grep -E "^case|^d" "$W/short.log" | tail -29
for pipe in decode decode-fused; do
  for pdl in 1 0; do
    echo "== profile $pipe PDL $pdl ($((SECONDS - start)) s)"
    mkdir -p "$W/$pipe-pdl$pdl"
    MEMBOUND_DECODE_PIPELINE=$pipe MEMBOUND_PDL=$pdl timeout 150 python benches/profile_step.py \
        --models llama-1b,llama-8b --batches 1 --out "$W/$pipe-pdl$pdl" >"$W/profile-$pipe-pdl$pdl.log" 2>&1
    grep -E "^== |^   _|^   step|predicted \(" "$W/profile-$pipe-pdl$pdl.log" | head -30
  done
done
tar czf "$OUT/session11b.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
