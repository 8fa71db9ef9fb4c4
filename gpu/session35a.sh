#!/usr/bin/env bash
# Prepared in session 34 for the next session's first device call (~9 min, under the 600 s limit; each part bounds itself): (1) gpu/session34e.sh, the
# wide flash-decoding variant compiled ahead (its GPU test, the split-decoding GPU tests, cache_growth across the
# 4096 capacity with an empty Triton cache: issue 13's growing-call goal at the new WIDE_FROM); (2) gpu/session34d.sh,
# flash decoding's wide tiles split for 2-3 programs per SM at batch 1 against SDPA (issue 12, after the ncu run) and
# WIDE_FROM at a 4096 capacity at batch 8; (3) gpu/session34c.sh, ncu of flash decoding against cuDNN, now with
# the 128-slot 4-warp form at 32k too (~40 s).
#   bash gpu/session35a.sh
D=$(dirname "${BASH_SOURCE[0]}")
bash "$D/session34e.sh"
bash "$D/session34d.sh"  # (its own 290 s bound: SECONDS counts from 0 in each script)
bash "$D/session34c.sh"
