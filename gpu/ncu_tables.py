"""The two tables gpu/session34c.sh prints from an ncu report's raw pages (``ncu -i REP --page raw --csv``): per kernel
its time, DRAM and launch figures, then its top five stall reasons (warps stalled per issued instruction).

    python gpu/ncu_tables.py RAW.csv STALLS.csv
"""

from __future__ import annotations

import csv
import sys

LAUNCH = ["gpu__time_duration.sum", "dram__bytes_read.sum", "dram__throughput.avg.pct_of_peak_sustained_elapsed",
          "sm__warps_active.avg.pct_of_peak_sustained_active", "launch__grid_size", "launch__block_size",
          "launch__registers_per_thread", "launch__shared_mem_per_block"]
STALL = "smsp__average_warps_issue_stalled_"


def kernel_rows(path: str) -> tuple[list[str], list[list[str]]] | None:
    """(header, one row per kernel) of a raw-page CSV: the header is the row naming "Kernel Name"; the unit row
    under it and short rows are dropped. None (the file printed) when there is no header: ncu's error text."""
    rows = list(csv.reader(open(path)))
    hdr = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if hdr is None:
        print(open(path).read()[:2000])
        return None
    h = rows[hdr]
    name = h.index("Kernel Name")
    return h, [r for r in rows[hdr + 1:] if len(r) == len(h) and r[name]]

def main(raw: str, stalls: str) -> None:
    table = kernel_rows(raw)
    if table:
        h, rows = table
        idx = [h.index(w) for w in ["Kernel Name", *LAUNCH] if w in h]
        for r in rows:
            if not r[idx[1]].startswith(("n", "u", "b", "%")):  # (a unit row: nsecond, usecond, byte, %)
                print(" | ".join(r[i][:40] for i in idx))
    table = kernel_rows(stalls)
    if table:
        h, rows = table
        cols = [(i, c[len(STALL):].split("_per_")[0]) for i, c in enumerate(h) if c.startswith(STALL)]
        for r in rows:
            vals = []
            for i, reason in cols:
                try:
                    vals.append((float(r[i].replace(",", "")), reason))
                except ValueError:
                    pass
            top = sorted(vals, reverse=True)[:5]
            print(r[h.index("Kernel Name")][:40], "|", ", ".join(f"{n} {v:.2f}" for v, n in top))


if __name__ == "__main__":
    main(*sys.argv[1:3])
