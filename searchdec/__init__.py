"""searchdec: constrained and search-based decoding for language models.

import searchdec as sd
model = sd.load("smollm2-135m")
out = sd.generate(model, "The capital of France is", max_tokens=20)
print(out.text)
"""

from searchdec import rewards  # sd.rewards.JsonValid, sd.rewards.SqlExecution, ...
from searchdec.distributed import LazyReward, RayExecutor
from searchdec.errors import (
    ConstraintError,
    DatabaseNotFoundError,
    EmptyLanguageError,
    ExecutorError,
    GrammarSyntaxError,
    ModelLoadError,
    ModelNotFoundError,
    PromptTooLongError,
    SchemaError,
    SearchdecError,
    UnsupportedKeywordError,
    WorkersLostError,
)
from searchdec.generate import Generation, Hypothesis, generate
from searchdec.grammars import (
    Constraint,
    PhrasesDoNotFitError,
    State,
    choice,
    from_outlines,
    includes,
    json_schema,
    lark,
    regex,
    sql,
    tool_calls,
)
from searchdec.models.loading import ALIASES, DEFAULT_MODEL, load
from searchdec.models.model import Model
from searchdec.requests import RequestError, chat_prompt, constraint_for
from searchdec.search import *  # noqa: F403 — every search, registered by its import in searchdec/search
from searchdec.search import __all__ as _searches
from searchdec.version import __version__  # noqa: F401 (sd.__version__)

__all__ = [
    *_searches,
    "ALIASES",
    "Constraint",
    "ConstraintError",
    "DatabaseNotFoundError",
    "EmptyLanguageError",
    "ExecutorError",
    "LazyReward",
    "RayExecutor",
    "WorkersLostError",
    "GrammarSyntaxError",
    "PhrasesDoNotFitError",
    "SchemaError",
    "State",
    "UnsupportedKeywordError",
    "choice",
    "from_outlines",
    "includes",
    "json_schema",
    "lark",
    "regex",
    "sql",
    "tool_calls",
    "RequestError",
    "chat_prompt",
    "constraint_for",
    "DEFAULT_MODEL",
    "Generation",
    "Hypothesis",
    "Model",
    "ModelLoadError",
    "ModelNotFoundError",
    "PromptTooLongError",
    "SearchdecError",
    "generate",
    "load",
    "rewards",
]
