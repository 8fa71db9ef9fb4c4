#!/usr/bin/env bash
# Session 28: the decode step of HF Llama 1.24B / 8B at b1 / b8 profiled at HEAD (benches/profile_step.py --quick;
# issue 13's per-kernel view on an H100: launches, time per kernel, gaps, the cost model's prediction). ~3 min.
#   bash gpu/session28d.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 300 python benches/profile_step.py --quick --out "$W" > "$W/profile.log" 2>&1
echo "profile rc=$? ($((SECONDS - start)) s)"; grep -E "^== |predicted \(" "$W/profile.log" | cut -c1-200
for f in "$W"/profile_step-*; do [ -e "$f" ] && n=$(basename "$f" | tr '+' '-') && [ "$n" != "$(basename "$f")" ] && mv "$f" "$W/$n"; done
tar czf "$OUT/session28d.tgz" -C "$W" .
