#!/usr/bin/env bash
# The norm's statistics from its producer (issue 13) on one H200, < 4 minutes:
#
#   bash gpu/norm_stats.sh
#
# 1. correctness (gating): the statistics kernels (linear_add_sumsq / gated_linear_add_sumsq /
#    rms_norm_linear_sumsq) against the unfused kernels and eager in bf16, fp16 and fp32 at odd sizes, split-K
#    on and off (tests/backends/test_norm_stats_kernels.py), and the fused
#    decode step's bf16 logits against the unfused step's at the Llama-3.2-1B shape with 2 layers, batch 1
#    and 8 (tests/backends/test_linear_fusion_gpu.py; tolerance |fused - unfused| <= 0.03 * max|logits| per
#    step: another summation order of a row's squares moves a few normed values by one bf16 ulp);
# 2. benches/norm_stats.py (< 1 min): a residual linear + the norm + the linear reading it, as three chains
#    (unfused / prologue / statistics) at the Llama layer shapes, M = 1 and 8, and what the norm costs each
#    consumer program beside the cost model's price of the statistics' re-reads (its calibration);
# 3. A/B of decode tok/s in one run: benches/decode_e2e.py, llama-1b and llama-8b, batch 1 and 8, 128 new
#    tokens after 128, membound triton+graphs with the default decode pipeline against the same with
#    MEMBOUND_DECODE_PIPELINE=decode-fused, each row beside the cost model's predicted step;
# 4. if time is left: benches/profile_step.py --quick for the fused step (launches, kernel times, gaps).
#
# Full results under $OUT (tests.log, norm_stats.log/json, e2e.log, decode_e2e-*.json, profile.log,
# profile_step-*); the tables last. About 4.5 minutes.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

echo "== 1. GPU correctness: statistics kernels (bf16/fp16/fp32) and the fused decode step's bf16 logits"
timeout 100 python -m pytest tests/backends/test_norm_stats_kernels.py tests/backends/test_linear_fusion_gpu.py \
    -q -n 4 -p no:cacheprovider >"$OUT/tests.log" 2>&1
rc=$?
tail -3 "$OUT/tests.log"
if [ $rc -ne 0 ]; then
    grep -E "^(FAILED|ERROR)|^E " "$OUT/tests.log" | head -30
    echo "GPU checks failed (rc $rc, $OUT/tests.log): no timing"
    exit 1
fi
echo "   ($((SECONDS - start)) s)"

echo "== 2. benches/norm_stats.py: the three chains at the Llama layer shapes"
timeout 75 python benches/norm_stats.py --out "$OUT" >"$OUT/norm_stats.log" 2>&1
echo "   (rc $?, $((SECONDS - start)) s)"

limit=$((255 - (SECONDS - start)))  # ~30 s a model and pipeline (compile, capture, 4 calls a batch)
echo "== 3. decode_e2e A/B: default decode pipeline vs decode-fused (${limit} s at most)"
timeout "$limit" python benches/decode_e2e.py --models llama-1b,llama-8b --batches 1,8 --new-tokens 128 \
    --prompt 128 --contenders membound --membound-backends triton+graphs,triton+graphs+fused \
    --budget-s $((limit - 35)) --out "$OUT" >"$OUT/e2e.log" 2>&1
echo "   (rc $?, $((SECONDS - start)) s)"
grep -E "failed|Error|error" "$OUT/e2e.log" | head -5

left=$((265 - (SECONDS - start)))
if [ "$left" -gt 100 ]; then
    echo "== 4. profile_step --quick, decode-fused (${left} s left)"
    MEMBOUND_DECODE_PIPELINE=decode-fused timeout "$left" python benches/profile_step.py --quick --out "$OUT" \
        >"$OUT/profile.log" 2>&1
    echo "   (rc $?)"
    grep -E "launches|step" "$OUT/profile.log" | head -12
else
    echo "== 4. skipped (${left} s left); alone (< 2 min):"
    echo "   MEMBOUND_DECODE_PIPELINE=decode-fused PYTHONPATH=. python benches/profile_step.py --quick --out \$OUT"
fi

echo
echo "== norm_stats"
sed -n '/^chain time/,$p' "$OUT/norm_stats.log"
echo
echo "== A/B ($((SECONDS - start)) s): decode tok/s, whole generate call (prefill + 128 tokens); step = measured"
echo "   decode step (ms), pred = the cost model's step (membound.step_prediction), launches = predicted per step"
python - "$OUT" <<'EOF'
import glob, json, sys
files = sorted(glob.glob(f"{sys.argv[1]}/decode_e2e-*.json"))
if not files:
    sys.exit("(no decode_e2e result file: see e2e.log)")
rows = json.load(open(files[-1]))["rows"]
base, fused = "membound triton+graphs", "membound triton+graphs decode-fused"
def get(model, b, c):
    return next((r for r in rows if r["model"] == model and r["batch"] == b and r["contender"] == c), None)
def ms(x):
    return f"{x * 1e3:7.3f}" if x else "      -"
print(f"{'model':9s} {'b':>2s} {'default tok/s':>13s} {'fused tok/s':>11s} {'fused/def':>9s} "
      f"{'step def':>8s} {'step fus':>8s} {'pred def':>8s} {'pred fus':>8s} {'launch':>11s}  agree")
for model in dict.fromkeys(r["model"] for r in rows):
    for b in sorted({r["batch"] for r in rows if r["model"] == model}):
        d, f = get(model, b, base), get(model, b, fused)
        if d is None or f is None or d["status"] != "ok" or f["status"] != "ok":
            print(f"{model:9s} {b:>2d} default: {d and d['status'][:40]}  fused: {f and f['status'][:40]}")
            continue
        agree = f"{f['match_prefix']}/{f['compared']}"
        print(f"{model:9s} {b:>2d} {d['tokens_per_s']:13.1f} {f['tokens_per_s']:11.1f} "
              f"{f['tokens_per_s'] / d['tokens_per_s']:9.3f} {ms(d.get('step_s'))} {ms(f.get('step_s'))} "
              f"{ms(d.get('predicted_step_s'))} {ms(f.get('predicted_step_s'))} "
              f"{d.get('predicted_launches')!s:>5s}/{f.get('predicted_launches')!s:<5s}  {agree}")
EOF
