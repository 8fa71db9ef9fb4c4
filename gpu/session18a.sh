#!/usr/bin/env bash
# Left by session 17 for the next GPU session (about 7 minutes on one H200; its device budget ran out first):
#   1. gpu/session17d.sh: the 8B decode step, batch 1 and 8, against the cd-tuned torch.compile in one run
#      (issue 13's open goals: batch 1 >= 92% of read bandwidth, batch 8 >= 1.3x);
#   2. benches/experiments/eos_stop.py: what the per-token EOS check costs compiled.generate (session 17 reads it
#      late for greedy decoding without a streamer; a no-op streamer keeps the old per-token check), 1.24B and 8B,
#      batch 1 and 8, 256 new tokens.
# Results under $OUT (e2e.log, decode_e2e-*.json, eos_stop.json / eos.log).
#
#   bash gpu/session18a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
bash gpu/session17d.sh
echo "== eos_stop ($((SECONDS - start)) s)"
timeout 200 python benches/experiments/eos_stop.py --models llama-1b,llama-8b --batches 1,8 --new-tokens 256 \
    --out "$OUT" >"$OUT/eos.log" 2>&1
echo "rc $?"; tail -14 "$OUT/eos.log"
echo "($((SECONDS - start)) s)"
