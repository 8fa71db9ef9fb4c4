"""An IR text fuzzer: broken variants of printed graphs must fail with ``ParseError`` or
``VerificationError``, never with another exception (``RecursionError``, ``KeyError``, a sympy error...).

``mutate(text, rng)`` applies 1-3 random edits at token granularity: delete, duplicate or swap a
token, replace it with another token of the text (often of the same class: a value name, a number,
a word, so that the text still parses and the verifier is exercised) or an odd one (``-1``, ``2.5``,
``inf``, ``[[[...]]]``, an unknown op or dtype...), truncate the text, or nest an attribute deeply.
``check(text)`` parses and
verifies one variant and returns the outcome (``"ok"``, ``"ParseError"``, ``"VerificationError"``) or
raises :class:`FuzzFailure` carrying the unexpected exception. ``tests/ir/test_ir_fuzz.py`` runs a few
hundred seeded cases; ``benches/fuzz_ir.py --minutes N`` runs for as long as asked.
"""

from __future__ import annotations

import random
import re

from membound.ir.parser import ParseError, parse
from membound.ir.verify import VerificationError, verify

_TOKEN = re.compile(r"%[\w.]+|@\w+|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|\w+|\"[^\"]*\"|\S")
ODD_TOKENS = ["-1", "-7", "0", "2.5", "1e309", "inf", "-inf", "nan", "oo", "zoo", "none", "true", "(", ")", "[",
              "]", "{", "}", ",", ":", "=", "%", "@", "%undefined", "f32", "i64", "bogus_dtype", "bogus_op", "B",
              "S*S", "Max(B, -3)", "1/2", "B/0", "__import__", "lambda", "''", '"', "\\", "#", "//", "\x00", "é",
              "99999999999999999999999", "return", "graph", "params", "state"]


class FuzzFailure(AssertionError):
    """A mutated text raised something other than ParseError/VerificationError."""

    def __init__(self, text: str, error: BaseException) -> None:
        self.text = text
        self.error = error
        super().__init__(f"{type(error).__name__}: {error}\n--- text ---\n{text[:4000]}")


def tokens(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _TOKEN.finditer(text)]


def _klass(tok: str) -> str:
    if tok.startswith("%"):
        return "value"
    if tok[0].isdigit() or tok[0] == "-":
        return "number"
    if tok[0].isalpha() or tok[0] == "_":
        return "word"
    return tok


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        spans = tokens(text)
        if not spans:
            return text
        a, b = spans[rng.randrange(len(spans))]
        kind = rng.randrange(10)
        if kind == 0:  # delete a token
            text = text[:a] + text[b:]
        elif kind == 1:  # duplicate a token
            text = text[:b] + " " + text[a:b] + text[b:]
        elif kind == 2:  # replace with another token of the text
            c, d = spans[rng.randrange(len(spans))]
            text = text[:a] + text[c:d] + text[b:]
        elif kind == 3:  # replace with an odd token
            text = text[:a] + rng.choice(ODD_TOKENS) + text[b:]
        elif kind == 4:  # truncate
            return text[:rng.randrange(len(text) + 1)]
        elif kind == 5:  # nest deeply (an attribute list, a dim expression)
            depth = rng.choice([50, 500, 5000])
            opener, closer = rng.choice([("[", "]"), ("(", ")"), ("{", "}")])
            text = text[:a] + opener * depth + text[a:b] + closer * depth + text[b:]
        elif kind == 6:  # swap two tokens
            c, d = spans[rng.randrange(len(spans))]
            if d <= a:
                text = text[:c] + text[a:b] + text[d:a] + text[c:d] + text[b:]
            elif b <= c:
                text = text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]
        elif kind in (8, 9):  # replace with a token of the same class (a name, a number, a word): parses more often
            cls = _klass(text[a:b])
            same = [(c, d) for c, d in spans if _klass(text[c:d]) == cls]
            c, d = rng.choice(same)
            word = text[c:d]
            if cls == "number" and rng.random() < 0.5:
                word = rng.choice(["-1", "0", "2.5", "-3", "1e309", "inf", "nan", "4096", "-0"])
            text = text[:a] + word + text[b:]
        else:  # duplicate a whole line (a node defined twice, a second return...)
            lines = text.split("\n")
            i = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
            text = "\n".join(lines)
    return text


def check(text: str) -> str:
    """``"ok"`` / ``"ParseError"`` / ``"VerificationError"``; anything else raises :class:`FuzzFailure`."""
    try:
        g = parse(text)
        verify(g)
    except ParseError as e:
        if isinstance(e.__cause__, Exception) and not isinstance(e.__cause__, ParseError):
            raise FuzzFailure(text, e.__cause__) from e  # caught only by parse()'s safety net: a gap to close
        return "ParseError"
    except VerificationError:
        return "VerificationError"
    except BaseException as e:  # noqa: BLE001 - the point is to catch every other exception type
        if isinstance(e, KeyboardInterrupt):
            raise
        raise FuzzFailure(text, e) from e
    return "ok"


def run(corpus: list[str], seed: int, cases: int) -> dict[str, int]:
    """``cases`` mutations of the corpus texts from ``seed``: counts per outcome (raises on a failure)."""
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    for _ in range(cases):
        out = check(mutate(rng.choice(corpus), rng))
        counts[out] = counts.get(out, 0) + 1
    return counts
