#!/usr/bin/env bash
# Session 28: benches/recurrent_decode.py again after session 27's capture fix (recurrent states restored after the
# warm-ups), the cat merge and the row siblings: Qwen3.5-0.8B-like and Mamba-2-780M-like, b1/b8, HF eager, membound
# triton and triton+graphs (speed, agreement with HF, and graphs against the plain run: must be equal). ~9 min.
#   bash gpu/session28a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
for m in qwen3.5-0.8b-like mamba2-780m-like; do
  timeout $((570 - SECONDS + start)) python benches/recurrent_decode.py --models $m --new-tokens 64 --reps 3 \
      --contenders "hf eager,membound triton,membound triton+graphs" --out "$W/$m" 2>&1 \
      | grep -v "Warning\|warn(\|falling back" > "$W/bench-$m.log"
  echo "$m rc=$? ($((SECONDS - start)) s)"; grep -E "tok/s" "$W/bench-$m.log" | cut -c1-130
done
for f in "$W"/*/recurrent_decode-*.json; do python - "$f" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    print(r["model"][:8], r["batch"], r["contender"][:22], r["status"], {k: v for k, v in r.items() if k.startswith("tokens")})
PY
done
tar czf "$OUT/session28a.tgz" -C "$W" .
