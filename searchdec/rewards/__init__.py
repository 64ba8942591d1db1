"""Rewards: one protocol (`Reward`: score outputs in batches, optionally with their token
log-probabilities, score the steps of one, cached) for execution rewards (JSON validity, grammar
acceptance, SQL run read-only against SQLite, Python tests in a sandboxed subprocess), likelihood
(the mean token log-probability, OpenAI's `best_of` criterion), model-based rewards (process and
outcome reward models, self-evaluation), tool-call grounding (argument values the conversation
supports), any Python callable, and weighted sums of them. Every
built-in reward pickles, so any executor can ship it to its workers."""

from searchdec.rewards.base import FunctionReward, Lazy, Reward, Weighted, as_reward
from searchdec.rewards.grounding import Grounding
from searchdec.rewards.likelihood import MeanLogprob
from searchdec.rewards.models import OutcomeRewardModel, ProcessRewardModel, SelfEvaluation
from searchdec.rewards.python import PythonTests, Run, extract_code
from searchdec.rewards.sql import SqlExecution
from searchdec.rewards.steps import StepFunction, as_step_reward
from searchdec.rewards.structure import Accepts, JsonValid

__all__ = [
    "Accepts",
    "FunctionReward",
    "Grounding",
    "JsonValid",
    "Lazy",
    "MeanLogprob",
    "OutcomeRewardModel",
    "ProcessRewardModel",
    "PythonTests",
    "Reward",
    "Run",
    "SelfEvaluation",
    "SqlExecution",
    "StepFunction",
    "Weighted",
    "as_reward",
    "as_step_reward",
    "extract_code",
]
