"""Facts about regular languages, proved with interegular (regex -> finite automaton) before any
token-level work: whether a pattern matches nothing, and whether two patterns share any string.

Used where a cheap proof saves an expensive or confusing failure: the outlines-core backend checks a
pattern here (a syntax error with its position, an empty language) before spending seconds building
its token index, and tool calls prove that a plain-text answer can never be read as a call.
interegular reads Python `re` syntax without lookarounds or backreferences; a pattern it cannot read
is left to the backend (None).
"""

from __future__ import annotations

import interegular

from searchdec.errors import EmptyLanguageError, GrammarSyntaxError


def _fsm(pattern: str):
    try:
        return interegular.parse_pattern(pattern).to_fsm()
    except interegular.patterns.InvalidSyntax as error:
        raise GrammarSyntaxError(f"regex {pattern!r} does not parse: {error}") from None
    except (interegular.patterns.Unsupported, NotImplementedError, ValueError, KeyError):
        return None


def check_nonempty(pattern: str, description: str) -> None:
    """Raise EmptyLanguageError when `pattern` matches no string at all."""
    fsm = _fsm(pattern)
    if fsm is not None and fsm.empty():
        raise EmptyLanguageError(f"{description} matches no output at all")


def disjoint(a: str, b: str) -> bool | None:
    """Whether no string matches both patterns (None: interegular cannot read one of them)."""
    fa, fb = _fsm(a), _fsm(b)
    if fa is None or fb is None:
        return None
    return (fa & fb).empty()  # FSM.isdisjoint compares something else: it said True for ".*" against "a"
