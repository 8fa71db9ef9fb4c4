"""Passes: the pass manager, instruments, the pattern-rewrite driver and the passes themselves.

Importing this package registers every built-in pass, so ``get_pass(name)`` and pipelines of names work:
every module of the package is imported (a new pass is one new file; its ``@register_pass`` does the rest).
"""

import importlib as _importlib
import pkgutil as _pkgutil

from membound.passes.instruments import DumpIR, Instrument, PrintAfterAll, PrintAfterChange, Timing
from membound.passes.manager import (
    PassContext,
    PassError,
    PassFn,
    PassLike,
    PassManager,
    PassRecord,
    get_pass,
    pass_name,
    register_pass,
    registered_passes,
)
from membound.passes.pipeline import PIPELINES, default_pipeline, insert_after, insert_before, named_pipeline, without

__all__ = [
    "PIPELINES", "DumpIR", "Instrument", "PassContext", "PassError", "PassFn", "PassLike", "PassManager", "PassRecord",
    "PrintAfterAll", "PrintAfterChange", "Timing", "default_pipeline", "get_pass", "insert_after", "insert_before",
    "named_pipeline", "pass_name", "register_pass", "registered_passes", "without",
]

for _module in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_module.name}")
