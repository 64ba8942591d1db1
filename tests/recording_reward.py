"""`RecordingReward`: a `rewards.Reward` that records how a search calls it, for tests of the reward protocol.

A search should hand a reward each frontier of whole outputs as ONE `score_batch(prompts, outputs,
logprobs=...)` call, and the steps of a partial output through `score_steps(prompt, steps)`. This
reward keeps every call it receives, in order, so a test can check exactly that:

    reward = RecordingReward()
    sd.generate(model, "hello", max_tokens=8, search=sd.BestOfN(4, reward=reward))
    assert len(reward.batch_calls) == 1 and len(reward.batch_calls[0].outputs) == 4
    assert all(call.logprobs is not None for call in reward.batch_calls)

`score_steps` is recorded as a steps call only: it scores the prefixes itself, not through
`score_batch`, so a steps call never shows up as a batch call. A call through `reward(prompt, output)`
or `score(...)` goes through `score_batch` and is recorded as a batch of one (how a search that calls a
reward one output at a time shows up). Scores are `function(prompt, output)` (by default the output's
length), cached like any reward's; `uses_logprobs=True` makes it a reward that needs log-probabilities
(then `function` gets them as a third argument).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from searchdec.rewards import Reward


@dataclass(frozen=True)
class BatchCall:
    """One `score_batch` call: what the search passed, copied."""

    prompts: list[str]
    outputs: list[str]
    logprobs: list[list[float]] | None


@dataclass(frozen=True)
class StepsCall:
    """One `score_steps` call."""

    prompt: str
    steps: list[str]


def output_length(prompt: str, output: str, *logprobs) -> float:
    return float(len(output))


class RecordingReward(Reward):
    """A reward that records every `score_batch` and `score_steps` call it receives."""

    def __init__(self, function: Callable[..., float] = output_length, *, uses_logprobs: bool = False) -> None:
        super().__init__()
        self.function = function
        self.uses_logprobs = uses_logprobs
        self.batch_calls: list[BatchCall] = []
        self.steps_calls: list[StepsCall] = []

    def score_batch(self, prompts: Sequence[str], outputs: Sequence[str], logprobs=None) -> list[float]:
        copied = None if logprobs is None else [list(values) for values in logprobs]
        self.batch_calls.append(BatchCall(list(prompts), list(outputs), copied))
        return super().score_batch(prompts, outputs, logprobs=logprobs)

    def score_steps(self, prompt: str, steps: Sequence[str]) -> list[float]:
        self.steps_calls.append(StepsCall(prompt, list(steps)))
        prefixes = ["".join(steps[: i + 1]) for i in range(len(steps))]
        if self.uses_logprobs:
            raise ValueError("a RecordingReward that uses logprobs cannot score steps (text alone)")
        return self._score([prompt] * len(prefixes), prefixes)

    def _score(self, prompts, outputs, logprobs=None):
        if self.uses_logprobs:
            return [float(self.function(p, o, lp)) for p, o, lp in zip(prompts, outputs, logprobs)]
        return [float(self.function(p, o)) for p, o in zip(prompts, outputs)]
