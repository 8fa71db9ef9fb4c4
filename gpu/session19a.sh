#!/usr/bin/env bash
# Left by session 18 (no GPU was lent that session) for the next GPU session, first call (at most 9.5 minutes on one
# H200): the one-launch attention block (membound/backends/triton/kernels/attn_block.py, issue 13).
#   1. its tests on the GPU (the odd-size fp32/fp16 cases CI runs under the interpreter, and the gpu-marked bf16 ones at
#      the 1.24B and 8B shapes: one program per item and the persistent grid, a CUDA-graph replay): the kernel spins
#      on in-kernel counters, so the process runs under a timeout (a hang costs 150 s, not the call);
#   2. benches/experiments/attn_block.py --quick: per layer (attention block + the same MLP), the library's chain
#      of kernels against attention_block, and against attention_block + mlp_block (2 launches a layer, session 19),
#      with and without PDL, 1.24B and 8B, context 256 and 4096.
# Results under $OUT (tests.log, attn_block.log, attn_block.json). Then, if it pays: the full sweep (no --quick)
# gpu/session19b.sh (the whole decode step with the decode-block pipeline against the default), gpu/session18a.sh
# (the 8B step against torch.compile, the EOS-stop timing), then pytest -m gpu.
#
#   bash gpu/session19a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== attn_block and mlp_block GPU tests"
timeout 150 python -m pytest -q -p no:cacheprovider tests/backends/test_attn_block.py tests/backends/test_mlp_block.py \
    >"$OUT/tests.log" 2>&1
echo "rc $?"; tail -5 "$OUT/tests.log"
echo "== attn_block experiment ($((SECONDS - start)) s)"
timeout 400 python benches/experiments/attn_block.py --quick --out "$OUT" >"$OUT/attn_block.log" 2>&1
echo "rc $?"; tail -12 "$OUT/attn_block.log"
echo "($((SECONDS - start)) s)"
