"""Step rewards from plain callables: `f(prompt, steps) -> list[float]` (one score per step so far, as
search-and-learn's PRMs return) or `-> float` (one score for the whole partial solution), wrapped as
a `Reward` so that step searches call every reward the same way (`score_steps`, `score_batch`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from searchdec.rewards.base import Reward


class StepFunction(Reward):
    """A callable over steps as a Reward: `score_steps` calls it once per solution; an output scored
    as a whole is one step."""

    def __init__(self, function: Callable) -> None:
        super().__init__()
        if not callable(function):
            raise TypeError(f"a step reward must be callable, got {type(function).__name__}")
        self.function = function

    def __repr__(self) -> str:
        return f"StepFunction({getattr(self.function, '__name__', self.function)!r})"

    def score_steps(self, prompt: str, steps: Sequence[str]) -> list[float]:
        value = self.function(prompt, list(steps))
        if isinstance(value, (list, tuple)):
            if len(value) != len(steps):
                raise ValueError(f"{self!r} returned {len(value)} scores for {len(steps)} steps")
            return [float(v) for v in value]
        return [float("nan")] * (len(steps) - 1) + [float(value)]  # one score: the last step's

    def _score(self, prompts, outputs):
        return [self.score_steps(p, [o])[-1] for p, o in zip(prompts, outputs)]


def as_step_reward(reward) -> Reward:
    """A Reward for a step search: a Reward as it is; a callable as a function of (prompt, steps)."""
    if isinstance(reward, Reward):
        return reward
    return StepFunction(reward)
