"""What every bench does with its result: a file name from the card, and the JSON written to
``benches/results/`` (not for smoke runs) and to ``--out``. Benches import it as ``benches._results`` after
putting the repository root on ``sys.path``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

RESULTS = Path(__file__).resolve().parent / "results"


def gpu_slug(name: str) -> str:
    """``NVIDIA H200`` -> ``nvidia-h200``: the card as it appears in result file names."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_record(record: Any, fname: str, out: Optional[str], smoke: bool) -> list[Path]:
    """Write ``record`` as ``fname`` into ``benches/results/`` (unless ``smoke``) and into ``out`` (when given);
    the paths written."""
    targets = ([] if smoke else [RESULTS / fname]) + ([Path(out) / fname] if out else [])
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
    return targets
