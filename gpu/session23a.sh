#!/usr/bin/env bash
# Left by session 22 for the next GPU call (about 6 minutes on one H100): is gpt-oss's batch-1 divergence from HF
# eager at the first greedy token (sessions 20 and 22, fused and unfused experts alike) a bf16 near-tie? The MoE
# benches now record, at the first divergence, HF's logit margin to our token and its rank (hf_margin, hf_rank,
# hf_logit_scale). benches/gpt_oss.py --quick and benches/deepseek_moe.py --quick, batch 1 only.
# Results under $OUT (gpt_oss.log, deepseek_moe.log, their JSON); the divergence fields last.
#
#   bash gpu/session23a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== gpt-oss ($((SECONDS - start)) s)"
timeout 200 python benches/gpt_oss.py --quick --batches 1 --budget-s 150 --out "$OUT" >"$OUT/gpt_oss.log" 2>&1
echo "rc $?"
echo "== deepseek_moe ($((SECONDS - start)) s)"
timeout 200 python benches/deepseek_moe.py --quick --batches 1 --budget-s 150 --out "$OUT" >"$OUT/deepseek_moe.log" 2>&1
echo "rc $?"
python - "$OUT" <<'PY'
import glob, json, sys
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    for r in json.load(open(f))["rows"]:
        print(f.rsplit("/", 1)[-1][:24], r["contender"], r.get("tok_s"), {k: r[k] for k in r if k.startswith(("agree", "hf_"))})
PY
echo "($((SECONDS - start)) s)"
