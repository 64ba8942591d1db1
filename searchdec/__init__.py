"""searchdec: constrained and search-based decoding for language models.

import searchdec as sd
model = sd.load("smollm2-135m")
out = sd.generate(model, "The capital of France is", max_tokens=20)
print(out.text)
"""

from searchdec import rewards  # sd.rewards.JsonValid, sd.rewards.SqlExecution, ...
from searchdec.distributed import Executor, InProcessExecutor, LazyReward, RayExecutor
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
from searchdec.grammars import Constraint, State, choice, from_outlines, json_schema, lark, regex, sql, tool_calls
from searchdec.models.loading import ALIASES, DEFAULT_MODEL, load
from searchdec.models.model import Model
from searchdec.requests import RequestError, chat_prompt, constraint_for
from searchdec.search import (
    DVTS,
    MCTS,
    AStar,
    Beam,
    BestFirstBeam,
    BestOfN,
    DiverseBeam,
    FirstFinish,
    SearchStats,
    StepBeam,
    Trace,
)
from searchdec.search.reward_guided import RewardGuidedSpeculative
from searchdec.search.sampling import Greedy, Sample
from searchdec.search.speculative import PromptLookup, SelfSpeculative, Speculative

__version__ = "0.1.0"

__all__ = [
    "AStar",
    "Beam",
    "BestFirstBeam",
    "BestOfN",
    "DiverseBeam",
    "FirstFinish",
    "DVTS",
    "MCTS",
    "SearchStats",
    "StepBeam",
    "Trace",
    "ALIASES",
    "Constraint",
    "ConstraintError",
    "DatabaseNotFoundError",
    "EmptyLanguageError",
    "Executor",
    "ExecutorError",
    "InProcessExecutor",
    "LazyReward",
    "RayExecutor",
    "WorkersLostError",
    "GrammarSyntaxError",
    "SchemaError",
    "State",
    "UnsupportedKeywordError",
    "choice",
    "from_outlines",
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
    "Greedy",
    "Hypothesis",
    "Model",
    "ModelLoadError",
    "ModelNotFoundError",
    "PromptTooLongError",
    "PromptLookup",
    "RewardGuidedSpeculative",
    "Sample",
    "SelfSpeculative",
    "Speculative",
    "SearchdecError",
    "generate",
    "load",
    "rewards",
]
