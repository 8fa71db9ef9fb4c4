#!/usr/bin/env bash
# Left by session 18 (and 19) for the next GPU session, after gpu/session19a.sh (about 9 minutes on one H200): the
# decode step with each layer's attention block one attention_block op (MEMBOUND_DECODE_PIPELINE=decode-block), and
# with its MLP one mlp_block op too (decode-layer: 2 launches a Llama layer, session 19), against the default
# pipeline, in one run each: benches/decode_e2e.py, llama-1b and llama-8b, batch 1 and 8 (batch 8 runs the library's
# kernels in turn inside the ops: a check that it costs nothing there), 128 new tokens after 128, membound
# triton+graphs only; then the per-kernel profile of the decode-layer step (launches a layer, time a kernel, gaps).
# Result files under $OUT/work (tarball); the tables last.
#
#   bash gpu/session19b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
for pipe in decode decode-block decode-layer; do
    MEMBOUND_DECODE_PIPELINE=$pipe timeout 140 python benches/decode_e2e.py --models llama-1b,llama-8b --batches 1,8 \
        --new-tokens 128 --prompt 128 --contenders membound --membound-backends triton+graphs --budget-s 115 \
        --out "$W/$pipe" >"$W/e2e-$pipe.log" 2>&1
    echo "$pipe: rc $? ($((SECONDS - start)) s)"
done
MEMBOUND_DECODE_PIPELINE=decode-layer timeout 130 python benches/profile_step.py --quick --out "$W" \
    >"$W/profile-layer.log" 2>&1
echo "profile rc $? ($((SECONDS - start)) s)"
tar czf "$OUT/work.tgz" -C "$W" .
for pipe in decode decode-block decode-layer; do
    echo "== $pipe"
    grep -E "membound triton\+graphs +step" "$W/e2e-$pipe.log"
    grep -E "^llama.*membound" "$W/e2e-$pipe.log" | grep -v step | awk '{print $1, $2, $NF, $(NF-1)}'
done
grep -E "^==|^   _|^   attention|^   void" "$W"/profile_step-*.txt | cut -c1-150
