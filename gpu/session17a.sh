#!/usr/bin/env bash
# Session 17, first GPU call (about 8 minutes on one H200):
#   1. where the decode-fused step loses (issue 13): benches/profile_step.py --quick with
#      MEMBOUND_DECODE_PIPELINE=decode-fused, with and without PDL (per-kernel times, against session 15's default
#      profiles), and benches/norm_stats.py (the unfused / prologue / statistics chains at the layer shapes);
#   2. GPU check of session 16's CPU-only fixes: the model fuzzer over MPT / XGLM / BLOOM in fp16 and in bf16 with
#      CUDA graphs, and every gpu-marked test.
# One tarball (work.tgz); the tables last.
#
#   bash gpu/session17a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
echo "== fused profiles"
MEMBOUND_DECODE_PIPELINE=decode-fused timeout 150 python benches/profile_step.py --quick --out "$W" >"$W/profile-fused.log" 2>&1
echo "rc $? ($((SECONDS - start)) s)"
MEMBOUND_PDL=0 MEMBOUND_DECODE_PIPELINE=decode-fused timeout 150 python benches/profile_step.py --quick --out "$W" \
    >"$W/profile-fused-nopdl.log" 2>&1
echo "rc $? ($((SECONDS - start)) s)"
timeout 75 python benches/norm_stats.py --out "$W" >"$W/norm_stats.log" 2>&1
echo "norm_stats rc $? ($((SECONDS - start)) s)"
echo "== fuzzer fp16 / bf16 (MPT, XGLM, BLOOM)"
for dt in float16 bfloat16; do
  timeout 80 python benches/fuzz_models.py --device cuda --cuda-graphs --minutes 1 --dtype $dt \
      --families hf-mpt hf-xglm hf-bloom --out "$W/fuzz_models-$dt.json" >"$W/fuzz-$dt.log" 2>&1
  echo "fuzz $dt rc $?"
  python - "$W/fuzz_models-$dt.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print({k: d[k] for k in ("passed", "cases_with_mismatches", "cases_with_exceptions", "exception_types", "families")})
for f in d["failures"]:
    print(f["case"][:160], f["mismatches"][:1], list(f["errors"].values())[:1])
PY
done
echo "== gpu-marked tests ($((SECONDS - start)) s)"
timeout 200 python -m pytest -q -rfE -m gpu -n 8 -p no:cacheprovider tests >"$W/gpu-tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/gpu-tests.log" | sort -u | head -10; tail -1 "$W/gpu-tests.log"
tar czf "$OUT/work.tgz" -C "$W" . 
echo "== tables ($((SECONDS - start)) s)"
grep -E "^==|^   _|^   void" "$W"/profile_step-*.txt | cut -c1-150
sed -n '/^chain time/,$p' "$W/norm_stats.log" | head -40
