"""What the searches need from a reward, kept minimal until the reward layer (searchdec/rewards) lands.

An outcome reward is any callable `reward(prompt_text, output_text) -> float` (higher is better). A
step reward (a PRM) is any callable `prm(prompt_text, steps) -> list[float]`, one score per step of
the partial output, as search-and-learn's PRMs return. `step_scores` adapts an outcome reward into a
step reward by scoring each prefix of steps, so any reward can drive a step-level search.
A reward object with a `batch(prompt_text, outputs) -> list[float]` method is called once per batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Reward(Protocol):
    def __call__(self, prompt: str, output: str) -> float: ...


@runtime_checkable
class StepReward(Protocol):
    def __call__(self, prompt: str, steps: list[str]) -> list[float]: ...


def check_reward(name: str, reward, search: str) -> None:
    """A missing or non-callable reward is an error before any generation starts."""
    if reward is None:
        raise ValueError(f"{search} needs {name}= (a callable f(prompt_text, output_text) -> float)")
    if not callable(reward):
        raise TypeError(f"{search}: {name} must be callable, got {type(reward).__name__}")


def score_outputs(reward: Callable, prompt: str, outputs: Sequence[str]) -> list[float]:
    """Rewards of `outputs` for `prompt`, batched when the reward can; NaN counts as -inf."""
    batch = getattr(reward, "batch", None)
    values = list(batch(prompt, list(outputs))) if callable(batch) else [reward(prompt, o) for o in outputs]
    if len(values) != len(outputs):
        raise ValueError(f"reward returned {len(values)} scores for {len(outputs)} outputs")
    return [_finite(v) for v in values]


def step_scores(prm: Callable, prompt: str, steps: list[str], per_step: bool) -> list[float]:
    """Per-step scores of `steps`: from a PRM (`per_step`), or an outcome reward on each prefix."""
    if per_step:
        values = list(prm(prompt, steps))
        if len(values) != len(steps):
            raise ValueError(f"prm returned {len(values)} scores for {len(steps)} steps")
        return [_finite(v) for v in values]
    return [_finite(prm(prompt, "".join(steps[: i + 1]))) for i in range(len(steps))]


def aggregate_steps(scores: list[float], how: str) -> float:
    """search-and-learn's aggregation of step scores: the last, the minimum, or the product."""
    if not scores:
        return 0.0
    if how == "last":
        return scores[-1]
    if how == "min":
        return min(scores)
    if how == "prod":
        return math.prod(scores)
    raise ValueError(f'aggregate must be "last", "min" or "prod", got {how!r}')


def with_reward(search, reward):
    """`search` with `reward` filled in where it takes one and has none yet."""
    fields = {f.name for f in dataclasses.fields(search)} if dataclasses.is_dataclass(search) else set()
    for name in ("reward", "prm", "heuristic"):
        if name in fields:
            if getattr(search, name) is None:
                return dataclasses.replace(search, **{name: reward})
            return search
    raise TypeError(f"{type(search).__name__} does not use a reward; drop reward= or pick a reward-driven search")


def _finite(value) -> float:
    value = float(value)
    return float("-inf") if math.isnan(value) else value
