"""Rewards: one protocol (`Reward`: score outputs in batches, score the steps of one, cached) for
execution rewards (JSON validity, grammar acceptance, SQL run read-only against SQLite, Python tests
in a sandboxed subprocess), model-based rewards (process and outcome reward models, self-evaluation),
any Python callable, and weighted sums of them."""

from searchdec.rewards.base import FunctionReward, Reward, Weighted, as_reward
from searchdec.rewards.models import OutcomeRewardModel, ProcessRewardModel, SelfEvaluation
from searchdec.rewards.python import PythonTests, Run, extract_code
from searchdec.rewards.sql import SqlExecution
from searchdec.rewards.steps import StepFunction, as_step_reward
from searchdec.rewards.structure import Accepts, JsonValid

__all__ = [
    "Accepts",
    "FunctionReward",
    "JsonValid",
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
