"""Typed pass options: a pass that takes options declares them as a small dataclass (xdsl-style),
and every way of giving them is checked against it, with an error naming the pass and the option.

    @dataclass(frozen=True)
    class ConstantFoldOptions:
        max_elements: int = 4096          # largest folded result kept as a constant

    @register_pass("constant-fold")
    class ConstantFold:
        Options = ConstantFoldOptions
        def __init__(self, options: Optional[ConstantFoldOptions] = None, **kwargs: Any) -> None:
            self.options = pass_options("constant-fold", ConstantFoldOptions, options, kwargs)

    get_pass("constant-fold", max_elements=16)             # keyword arguments
    parse_pipeline("canonicalize,constant-fold{max-elements=16}")   # pipeline text (membound opt -p)

Options are the dataclass's fields that take part in comparison (a field declared with
``compare=False`` is internal state, not an option). Values are checked against the field's type
(``int``, ``float``, ``bool``, ``str``, ``Optional[...]``, ``tuple[str, ...]``; pipeline text values are
converted first); a dataclass's own ``__post_init__`` checks the rest (ranges, choices).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Mapping, Optional, TypeVar, Union

O = TypeVar("O")


class PassOptionError(TypeError):
    """An option a pass does not have, or a value of the wrong type."""


def option_fields(options_type: type) -> dict[str, Any]:
    """Option name -> its type, for a pass's options dataclass."""
    hints = typing.get_type_hints(options_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(options_type) if f.init and f.compare}


def describe_options(options_type: type) -> str:
    """``name: type = default`` for each option (for error messages and ``--help``)."""
    defaults = {f.name: f.default for f in dataclasses.fields(options_type)}
    return ", ".join(f"{k}: {_type_name(t)} = {defaults.get(k)!r}" for k, t in option_fields(options_type).items())


def pass_options(pass_name: str, options_type: type[O], options: Optional[O] = None,
                 given: Optional[Mapping[str, Any]] = None) -> O:
    """The options of pass ``pass_name``: ``options`` (an ``options_type`` instance) or the keyword
    values ``given``, never both. Raises :class:`PassOptionError` naming the pass and the option."""
    given = dict(given or {})
    if options is not None:
        if given:
            raise PassOptionError(f"pass {pass_name!r}: give its options as one {options_type.__name__} or as "
                                  f"keywords, not both (got both and {sorted(given)})")
        if not isinstance(options, options_type):
            raise PassOptionError(f"pass {pass_name!r}: options must be a {options_type.__name__}, got "
                                  f"{type(options).__name__}")
        return options
    fields = option_fields(options_type)
    values: dict[str, Any] = {}
    for key, value in given.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise PassOptionError(f"pass {pass_name!r} has no option {key!r}; its options: "
                                  f"{describe_options(options_type) or 'none'}")
        want = fields[name]
        if isinstance(value, str) and not _accepts(want, value):
            value = _from_text(pass_name, name, want, value)
        if not _accepts(want, value):
            raise PassOptionError(f"pass {pass_name!r}: option {name}={value!r} must be {_type_name(want)}, "
                                  f"not {type(value).__name__}")
        values[name] = value
    try:
        return options_type(**values)
    except (TypeError, ValueError) as e:
        if str(e).startswith(f"pass {pass_name!r}"):
            raise
        raise PassOptionError(f"pass {pass_name!r}: {e}") from e


def parse_pipeline(text: str) -> list[Any]:
    """``"canonicalize,constant-fold{max-elements=16 max-eval-elements=4096}"`` as pipeline entries:
    a name alone, or a pass built with its options (``name{key=value ...}``, as ``mlir-opt`` writes them)."""
    from membound.passes.manager import get_pass

    entries: list[Any] = []
    for piece in re.split(r",(?![^{]*\})", text):
        piece = piece.strip()
        if not piece:
            continue
        m = re.fullmatch(r"([\w-]+)\s*(?:\{([^{}]*)\})?", piece)
        if m is None:
            raise PassOptionError(f"cannot read {piece!r} in the pipeline {text!r}: write pass names separated by "
                                  "commas, options in braces: canonicalize,constant-fold{max-elements=16}")
        name, body = m.group(1), m.group(2)
        if body is None:
            get_pass(name)  # an unknown name raises here, listing the registered passes
            entries.append(name)
            continue
        given: dict[str, str] = {}
        for item in body.split():
            key, eq, value = item.partition("=")
            if not eq:
                raise PassOptionError(f"pass {name!r}: option {item!r} has no value (write {item}=...)")
            given[key] = value
        entries.append(get_pass(name, **given))
    return entries


def _accepts(want: Any, value: Any) -> bool:
    origin = typing.get_origin(want)
    if want is Any:
        return True
    if origin is Union:
        return any(_accepts(a, value) for a in typing.get_args(want))
    if want is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(want)
        return isinstance(value, tuple) and all(_accepts(args[0], v) for v in value)
    if want is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(want, type):
        return isinstance(value, want)
    return True  # a type we do not check here (the dataclass checks it)


def _from_text(pass_name: str, name: str, want: Any, text: str) -> Any:
    """A pipeline-text value as the option's type."""
    candidates = typing.get_args(want) if typing.get_origin(want) is Union else (want,)
    for t in candidates:
        try:
            if t is bool and text.lower() in ("true", "false", "1", "0"):
                return text.lower() in ("true", "1")
            if t is int:
                return int(text, 0)
            if t is float:
                return float(text)
            if t is type(None) and text.lower() in ("none", "null"):
                return None
            if typing.get_origin(t) is tuple:
                return tuple(x for x in text.split("|") if x)
        except ValueError:
            continue
    if str in candidates:
        return text
    raise PassOptionError(f"pass {pass_name!r}: option {name}={text!r} is not {_type_name(want)}")


def _type_name(t: Any) -> str:
    if typing.get_origin(t) is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(t))
    if t is type(None):
        return "None"
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")
