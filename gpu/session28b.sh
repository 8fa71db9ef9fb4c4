#!/usr/bin/env bash
# Session 28, after gpu/session28a.sh (whose membound steps were within the prefill's jitter: N = 64, 3 reps, a slow
# host): membound triton+graphs alone with the paired timing (interleaved N / N/2 calls, >= 3 s each), Qwen3.5 and
# Mamba-2, b1/b8; then the decode step profiled (graph replay, CUDA events) at b1: Qwen3.5 with and without the
# row-sibling merge, Mamba-2 as is. ~7 min.
#   bash gpu/session28b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
for m in qwen3.5-0.8b-like mamba2-780m-like; do
  timeout 150 python benches/recurrent_decode.py --models $m --new-tokens 64 --reps 5 --min-seconds 3 \
      --contenders "membound triton+graphs" --out "$W/$m" 2>&1 | grep -v "Warning\|warn(\|falling back" > "$W/bench-$m.log"
  echo "$m rc=$? ($((SECONDS - start)) s)"; grep -E "tok/s" "$W/bench-$m.log" | cut -c1-130
done
prof() { local tag=$1; shift; timeout 150 python "$@" --source recurrent --batches 1 --context 128 --out "$W/$tag" \
    > "$W/profile-$tag.log" 2>&1; echo "$tag rc=$? ($((SECONDS - start)) s)"
    grep -E "^== |predicted \(" "$W/profile-$tag.log" | cut -c1-200; }
prof qwen-siblings benches/profile_step.py --models qwen3.5-0.8b-like
prof qwen-nosiblings gpu/session28_nosiblings.py --models qwen3.5-0.8b-like
prof mamba2 benches/profile_step.py --models mamba2-780m-like
for d in "$W"/*/; do for f in "$d"profile_step-*; do [ -e "$f" ] && mv "$f" "$d$(basename "$f" | tr '+' '-')"; done; done
for f in "$W"/*/recurrent_decode-*.json; do python - "$f" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    print(r["model"][:8], r["batch"], r["status"], "step ms %.3f (p10 %.3f p90 %.3f, %d pairs) %.1f%%" % (
        1e3 * r["step_s"], 1e3 * r["step_s_p10"], 1e3 * r["step_s_p90"], r["pairs"], r["roofline_pct"]))
PY
done
tar czf "$OUT/session28b.tgz" -C "$W" .
