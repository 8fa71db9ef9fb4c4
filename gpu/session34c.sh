#!/usr/bin/env bash
# Session 34: Nsight Compute on flash decoding vs SDPA's split-KV kernel at batch 1 (gpu/ncu_decode.py: head dim 64
# at a 256-slot cache in a 512-slot capacity, the 1.24B step's case; 64 and 128 at 32768). ~2 min.
#   bash gpu/session34c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"
timeout 400 "$NCU" --profile-from-start off --clock-control none --set full -f -o "$W/decode" \
    python gpu/ncu_decode.py > "$W/ncu-run.log" 2>&1
echo "ncu rc=$? ($((SECONDS - start)) s)"; grep -E "^===|error|ERR" "$W/ncu-run.log" | head -20
"$NCU" -i "$W/decode.ncu-rep" --page details > "$W/ncu-details.txt" 2>&1
"$NCU" -i "$W/decode.ncu-rep" --page raw --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum,\
dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,\
launch__grid_size,launch__block_size,launch__registers_per_thread,launch__shared_mem_per_block,\
sm__throughput.avg.pct_of_peak_sustained_elapsed,smsp__cycles_active.avg.pct_of_peak_sustained_elapsed \
    > "$W/ncu-raw.csv" 2>&1
# the stall reasons (warps stalled per issued instruction, WarpStateStats), top five per kernel
"$NCU" -i "$W/decode.ncu-rep" --page raw --csv \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" > "$W/ncu-stalls.csv" 2>&1
python gpu/ncu_tables.py "$W/ncu-raw.csv" "$W/ncu-stalls.csv"
grep -E "^  [a-z_].*\(|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Stall|stall|cycles being stalled" \
    "$W/ncu-details.txt" | head -120 | cut -c1-220
tar czf "$OUT/session34c.tgz" -C "$W" ncu-run.log ncu-details.txt ncu-raw.csv ncu-stalls.csv
