#!/usr/bin/env bash
# Session 27: Kimi KDA-only bisection on cuda (gpu/session27_kimi_bisect.py, each variant a process). ~4 min.
#   bash gpu/session27a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
run() { echo "== $* ($((SECONDS - start)) s)"; timeout 240 env "$@" 2>&1 | grep -E "^kimi|^oracle|Error|error" | cut -c1-400; }
run python gpu/session27_kimi_bisect.py oracle
run python gpu/session27_kimi_bisect.py default
run python gpu/session27_kimi_bisect.py notf32
run python gpu/session27_kimi_bisect.py nographs
run MEMBOUND_PDL=0 python gpu/session27_kimi_bisect.py default
run MEMBOUND_STATE_INPLACE=0 python gpu/session27_kimi_bisect.py default
run python gpu/session27_kimi_bisect.py la-reference
run python gpu/session27_kimi_bisect.py reference
run TRITON_INTERPRET=1 python gpu/session27_kimi_bisect.py nographs
echo "done ($((SECONDS - start)) s)"
