# Sourced by the gpu/*.sh scripts: strict mode, the repository root, the package on the path, the output folder
# ($OUT, which the device tool sets; gpu-out/ by hand) and a timer ($start).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
start=$SECONDS

# e2e_row NAME BATCH PROMPT [VAR=value...]: one decode_e2e row (the 1.24B shape, 128 new tokens, membound alone on
# triton+graphs) under the given environment, skipped when fewer than ROW_MIN (45) seconds are left before END;
# its log and result as $W/e2e-NAME.log and .json (one level under $OUT/work: deeper files come back only in the
# tarball), its step line printed. The calling script sets W and END.
e2e_row() {
  local name=$1 batch=$2 prompt=$3; shift 3
  local left=$((END - SECONDS))
  [ $left -lt "${ROW_MIN:-45}" ] && { echo "skip $name ($left s left)"; return; }
  mkdir -p "$W/e2e-$name.d"
  env "$@" timeout $left python benches/decode_e2e.py --models llama-1b --batches "$batch" --new-tokens 128 \
      --prompt "$prompt" --contenders membound --membound-backends triton+graphs --budget-s $((left - 10)) \
      --out "$W/e2e-$name.d" > "$W/e2e-$name.log" 2>&1
  echo "== $name rc=$? ($((SECONDS - start)) s)"
  grep -vE "^\[" "$W/e2e-$name.log" | grep -E "membound" | grep step | head -1 | cut -c1-100
  for f in "$W/e2e-$name.d"/decode_e2e-*.json; do [ -e "$f" ] && mv "$f" "$W/e2e-$name.json"; done
  rmdir "$W/e2e-$name.d" 2>/dev/null
}
