# Sourced by the gpu/*.sh scripts: strict mode, the repository root, the package on the path, the output folder
# ($OUT, which the device tool sets; gpu-out/ by hand) and a timer ($start).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
start=$SECONDS
