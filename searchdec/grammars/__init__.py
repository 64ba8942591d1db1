"""Grammar constraints: backend-neutral specs compiled once per tokenizer into a Constraint whose States
live on hypotheses (fork, advance, mask). The contract is grammars/base.py; each backend is one
module, registered below by the name specs carry (`backend=`)."""

from searchdec.grammars.base import (
    Backend,
    Constraint,
    State,
    TokenizerInfo,
    apply_masks,
    backend_named,
    backend_names,
    register_backend,
    tokenizer_info,
)
from searchdec.grammars.lexical import Includes, LexicalBackend, PhrasesDoNotFitError, includes
from searchdec.grammars.llguidance_backend import LLGuidanceBackend
from searchdec.grammars.outlines import from_outlines
from searchdec.grammars.outlines_core_backend import OutlinesCoreBackend
from searchdec.grammars.specs import Choice, ConstraintSpec, JsonSchema, Lark, Regex, choice, json_schema, lark, regex
from searchdec.grammars.sql import Sql, sql
from searchdec.grammars.tool_calls import ToolCalls, tool_calls

register_backend(LLGuidanceBackend())
register_backend(OutlinesCoreBackend())
register_backend(LexicalBackend())

__all__ = [
    "Backend",
    "Choice",
    "Constraint",
    "ConstraintSpec",
    "Includes",
    "JsonSchema",
    "Lark",
    "PhrasesDoNotFitError",
    "Regex",
    "Sql",
    "State",
    "TokenizerInfo",
    "ToolCalls",
    "apply_masks",
    "backend_named",
    "backend_names",
    "choice",
    "from_outlines",
    "includes",
    "json_schema",
    "lark",
    "regex",
    "register_backend",
    "sql",
    "tokenizer_info",
    "tool_calls",
]
