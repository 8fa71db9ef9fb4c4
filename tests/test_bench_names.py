"""A bench script's folder is first on ``sys.path`` while it runs (and the benches import each other from it), so
a bench module named like an installed package or a standard-library module shadows it for everything the bench
imports: ``benches/kernels.py`` did, for Hugging Face's ``kernels`` package, which transformers imports when it is
installed (``from kernels import ...`` then failed inside transformers, in any process that had loaded a bench)."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

BENCHES = Path(__file__).resolve().parents[1] / "benches"


def test_no_bench_module_shadows_an_installed_package_or_the_standard_library() -> None:
    names = {p.stem for p in BENCHES.glob("*.py")}
    assert "decode_e2e" in names  # the glob found the benches
    taken = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    assert not names & taken, f"rename these benches: {sorted(names & taken)}"
