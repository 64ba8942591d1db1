"""`outlines.types` objects taken unchanged: `from_outlines(obj)` turns outlines' output types into specs:
`JsonSchema` into `sd.json_schema`, `CFG` into `sd.lark`, `Choice` into `sd.choice`, and every other
DSL term (Regex, `integer`, `email`, sequences, quantifiers...) or Python type outlines understands
(Literal, int, bool, Enum...) into `sd.regex` of the regex outlines itself derives. (The outlines-core
grammar backend is grammars/outlines_core_backend.py.)
"""

from __future__ import annotations

import json

from searchdec.errors import ConstraintError
from searchdec.grammars.specs import choice, json_schema, lark, regex


def is_outlines_type(obj) -> bool:
    module = getattr(type(obj), "__module__", "") or ""
    own = getattr(obj, "__module__", "") if isinstance(obj, type) else ""
    return module.startswith("outlines.") or (own or "").startswith("outlines.")


def from_outlines(obj):
    """The spec for an `outlines.types` output type (or a Python type outlines understands)."""
    try:
        from outlines.types import dsl
    except ImportError:
        raise ConstraintError("from_outlines() needs the outlines package: pip install outlines") from None
    if isinstance(obj, dsl.JsonSchema):
        schema = json.loads(obj.schema) if isinstance(obj.schema, str) else obj.schema
        if getattr(obj, "whitespace_pattern", None):
            raise ConstraintError(
                "outlines JsonSchema whitespace_pattern is not taken over: searchdec bounds JSON whitespace with "
                "sd.json_schema(..., max_whitespace=N)"
            )
        return json_schema(schema)
    if isinstance(obj, dsl.CFG):
        return lark(obj.definition)
    if isinstance(obj, dsl.Choice):
        return choice([str(item) for item in obj.items])
    if not isinstance(obj, dsl.Term):
        try:
            obj = dsl.python_types_to_terms(obj)
        except Exception as error:  # outlines raises a bare TypeError/ValueError for what it cannot map
            raise ConstraintError(f"outlines cannot turn {obj!r} into an output type: {error}") from None
        if isinstance(obj, (dsl.JsonSchema, dsl.CFG, dsl.Choice)):
            return from_outlines(obj)
    return regex(dsl.to_regex(obj))
