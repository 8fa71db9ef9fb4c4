#!/usr/bin/env bash
# Session 30: attention_linear (the o projection merges flash decoding's partials). First the chain experiment
# (benches/experiments/attn_o_merge.py: attention -> o projection layers, apart / split + merge / merged), then the
# decode step A/B (profile_step, graph replay: the default pipeline against MEMBOUND_DECODE_PIPELINE=decode-attn-linear,
# 1.24B then 8B, batch 1 and 8, 1.24B again), then session30a's short-context variants (guarded). ~7 min.
#   bash gpu/session30b.sh
# Ran once (H100, at commit cc17454; results benches/results/*-session30-*). attention_linear lost badly and its code
# was reverted, so from then on run it from that commit (git checkout cc17454).
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python benches/experiments/attn_o_merge.py --out "$W" > "$W/attn_o_merge.log" 2>&1
echo "attn_o_merge rc=$? ($((SECONDS - start)) s)"; tail -16 "$W/attn_o_merge.log" | cut -c1-200
prof() {  # name pipeline models
  [ $SECONDS -gt 330 ] && { echo "skip $1 (device budget)"; return; }
  mkdir -p "$W/$1"
  MEMBOUND_DECODE_PIPELINE=$2 timeout 90 python benches/profile_step.py --models "$3" --batches 1,8 --timed 200 \
      --out "$W/$1" > "$W/profile-$1.log" 2>&1
  echo "$1 rc=$? ($((SECONDS - start)) s)"; grep -E "^== |_flash_decoding|_linear_small" "$W/profile-$1.log" | cut -c1-150
}
prof base1 decode llama-1b
prof al1 decode-attn-linear llama-1b
prof base8b decode llama-8b
prof al8b decode-attn-linear llama-8b
prof base2 decode llama-1b
prof al2 decode-attn-linear llama-1b
for v in wide s4; do
  wide=128; st=3; [ $v = wide ] && wide=64,128; [ $v = s4 ] && st=4
  [ $SECONDS -gt 400 ] && { echo "skip $v (device budget)"; continue; }
  mkdir -p "$W/$v"
  MEMBOUND_DECODE_WIDE_DIMS=$wide MEMBOUND_DECODE_STAGES=$st timeout 50 python benches/profile_step.py --models llama-1b \
      --batches 1,8 --timed 200 --out "$W/$v" > "$W/profile-$v.log" 2>&1
  echo "$v rc=$? ($((SECONDS - start)) s)"; grep -E "^== |_flash_decoding" "$W/profile-$v.log" | cut -c1-150
done
find "$W" -name 'profile_step-*' | while read -r f; do n=$(basename "$f" | tr '+' '-'); [ "$n" != "$(basename "$f")" ] && mv "$f" "$(dirname "$f")/$n"; done
tar czf "$OUT/session30b.tgz" -C "$W" .
