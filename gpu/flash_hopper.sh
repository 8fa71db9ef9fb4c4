#!/usr/bin/env bash
# Hopper techniques for prefill flash attention (about 3 minutes on one H200): TMA through device- and host-made
# tensor descriptors, Triton's automatic warp specialisation (tl.range(..., warp_specialize=True)), the two-loop
# causal split, against our kernel (pick_config) and SDPA (gqa, expanded, cuDNN). Every Triton config is first
# compiled in a child process (PTX features in the JSON: wgmma, TMA, setmaxnreg); B=4 S=4096 and B=1 S=8192 at
# D=128, B=4 S=4096 at D=64, causal and not. Writes $OUT/flash_prefill_hopper.json; the summary table is last.
#
#   bash gpu/flash_hopper.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
timeout 280 python benches/experiments/flash_prefill_hopper.py --out "$OUT" --budget-s 200 >"$OUT/flash_hopper.log" 2>&1
echo "rc $?"
grep -vE "^\s|Traceback|^[A-Za-z]+Error|UserWarning|warn_once" "$OUT/flash_hopper.log" | tail -40
echo "($((SECONDS - start)) s)"
