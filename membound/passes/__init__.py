"""Passes: the pass manager, instruments, the pattern-rewrite driver and the passes themselves.

Importing this package registers every built-in pass, so ``get_pass(name)`` and pipelines of names work.
"""

from membound.passes import canonicalize as _canonicalize  # noqa: F401  (registers the pass)
from membound.passes import constant_fold as _constant_fold  # noqa: F401
from membound.passes import cse as _cse  # noqa: F401
from membound.passes import dce as _dce  # noqa: F401
from membound.passes import fuse_attention as _fuse_attention  # noqa: F401
from membound.passes import fuse_gated_linear as _fuse_gated_linear  # noqa: F401
from membound.passes import fuse_moe as _fuse_moe  # noqa: F401
from membound.passes import insert_kv_cache as _insert_kv_cache  # noqa: F401
from membound.passes import merge_linear as _merge_linear  # noqa: F401
from membound.passes import quantize_weights as _quantize_weights  # noqa: F401
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
