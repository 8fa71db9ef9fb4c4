"""Pipelines are plain lists of passes (or registered pass names); these helpers compose them.

    pipeline = insert_after(default_pipeline(), "canonicalize", my_pass)
    PassManager(pipeline).run(graph)
"""

from __future__ import annotations

from typing import Sequence

from membound.passes.manager import PassFn, PassLike, get_pass, pass_name

DEFAULT_PASSES = ("canonicalize", "constant-fold", "common-subexpression-elimination", "dead-code-elimination")


def default_pipeline() -> list[PassFn]:
    """A fresh list of the default passes, in order (safe to edit)."""
    return [get_pass(name) for name in DEFAULT_PASSES]


def _position(pipeline: Sequence[PassLike], name: str) -> int:
    names = [pass_name(p) for p in pipeline]
    if name not in names:
        raise KeyError(f"no pass named {name!r} in the pipeline {names}")
    return names.index(name)


def insert_before(pipeline: Sequence[PassLike], name: str, p: PassLike) -> list[PassLike]:
    """A new list with ``p`` just before the first pass called ``name``."""
    out = list(pipeline)
    out.insert(_position(out, name), p)
    return out


def insert_after(pipeline: Sequence[PassLike], name: str, p: PassLike) -> list[PassLike]:
    """A new list with ``p`` just after the first pass called ``name``."""
    out = list(pipeline)
    out.insert(_position(out, name) + 1, p)
    return out


def without(pipeline: Sequence[PassLike], name: str) -> list[PassLike]:
    """A new list without the passes called ``name``."""
    _position(pipeline, name)
    return [p for p in pipeline if pass_name(p) != name]
