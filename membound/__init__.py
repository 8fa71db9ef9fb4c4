"""membound: a memory-bound-aware compiler for transformer inference.

The public surface: ``compile``, ``explain``, ``default_pipeline`` and the helpers to extend it.
"""

from __future__ import annotations

from typing import Any

from membound import logs as _logs

__version__ = "0.1.0"

_logs.configure_from_env()  # MEMBOUND_LOGS=+passes,recompiles,... (membound/logs.py)

__all__ = ["CompileOptions", "CompiledModel", "QuantConfig", "compile", "default_pipeline", "explain", "generate",
           "insert_after", "insert_before", "register_pass", "save_quantized"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import membound` stays cheap and the CLI starts fast.
    if name in ("compile", "CompiledModel", "CompileOptions", "generate"):
        from membound import api

        return getattr(api, name)
    if name in ("default_pipeline", "register_pass", "insert_before", "insert_after"):
        import membound.passes as passes

        return getattr(passes, name)
    if name == "QuantConfig":
        from membound.passes.quantize_weights import QuantConfig

        return QuantConfig
    if name == "save_quantized":
        from membound.quantized_io import save_quantized

        return save_quantized
    if name == "explain":
        # the function lives in membound/explainer.py: a module named explain.py would replace this
        # attribute with the module as soon as anything imported it
        from membound.explainer import explain

        return explain
    raise AttributeError(f"module 'membound' has no attribute {name!r}")
