"""Grammar constraints: specs compiled once per tokenizer into a Constraint whose States live on
hypotheses (fork, advance, mask), backed by llguidance (or outlines-core for regular languages)."""

from searchdec.grammars.outlines import from_outlines
from searchdec.grammars.specs import Choice, ConstraintSpec, JsonSchema, Lark, Regex, choice, json_schema, lark, regex
from searchdec.grammars.sql import Sql, sql
from searchdec.grammars.state import Constraint, State, apply_masks
from searchdec.grammars.tool_calls import ToolCalls, tool_calls

__all__ = [
    "Choice",
    "Constraint",
    "ConstraintSpec",
    "JsonSchema",
    "Lark",
    "Regex",
    "Sql",
    "State",
    "ToolCalls",
    "apply_masks",
    "choice",
    "from_outlines",
    "json_schema",
    "lark",
    "regex",
    "sql",
    "tool_calls",
]
