#!/usr/bin/env bash
# Left by session 23 (CPU only: no device time) for one GPU call, about 5 minutes on one H100:
#   1. the moe kernels compiled: session 22's paired in-place gate/up load (never run on a GPU) and session 23's
#      clamped silu (act="silu" with a limit, HY-V4's experts), with the rest of the moe kernel tests;
#   2. the families session 23 made capture and decode, on cuda, both backends (kernels compiled, CUDA graphs):
#      MiMo-V2-Flash (row-max shift, sinks), Granite-SWA dense / MoE (the logsumexp sink scale), DeepSeek-V3.2 and
#      GLM-MoE-DSA (sparse attention kept dense up to index_topk), HY-V4 (that and the clamped silu experts), Gemma 3n
#      (AltUp, LAuReL, KV sharing, activation sparsity), and (session 24) LFM2 and LFM2-MoE, whose short convolutions
#      decode with a ring state (cache_write / gather on a rank-3 state), in 5 processes.
# One tarball under $OUT; the tables last.
#
#   bash gpu/session24a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
timeout 150 python -m pytest -q -rfE -n 8 -p no:cacheprovider tests/backends/test_moe_kernel.py >"$W/moe-tests.log" 2>&1
echo "moe kernel tests rc $? ($((SECONDS - start)) s)"
fams=(mimo-v2-flash granite-swa granite-moe-swa deepseek-v3.2 glm-moe-dsa hy-v4 gemma3n longcat-flash lfm2 lfm2-moe)
for i in 0 1 2 3 4; do
    part=("${fams[$((2 * i))]}" "${fams[$((2 * i + 1))]}")
    timeout 200 python benches/hf_families.py --device cuda --families "${part[@]}" --out "$W/hf$i" \
        >"$W/hf$i.log" 2>&1 &
done
wait
tar czf "$OUT/session24a.tgz" -C "$W" . && rm -rf "$W/hf"?
grep -E "(FAILED|ERROR) tests/" "$W/moe-tests.log" | sort -u | head -10; tail -1 "$W/moe-tests.log"
echo "hf_families: $(cat "$W"/hf?.log | grep -cE '^[a-z0-9.-]+ +(reference|triton) +ok ') of $((${#fams[@]} * 2)) runs ok"
grep -hE '^[a-z0-9.-]+ +(reference|triton) +(error|wrong)' "$W"/hf?.log | cut -c1-200
echo "($((SECONDS - start)) s)"
