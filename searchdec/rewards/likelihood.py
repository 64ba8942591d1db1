"""Likelihood rewards: an output scored by the model's own token log-probabilities, read off the search.

`MeanLogprob()` is the criterion of OpenAI's legacy `best_of` (and the server's best-of-N "logprob"
reward): the mean token log-probability of the output under the model. No reward model and no extra
forward: the searches pass each output's token log-probabilities to `score_batch(..., logprobs=...)`.
By default the score is its exponential, the geometric-mean token probability in (0, 1]: the same
order, and positive, so that best-of-N's "weighted" aggregate (a sum per answer) grows with
agreement instead of shrinking; `log=True` gives the mean log-probability itself (<= 0). An output
of no tokens has mean 0 (score 1.0). Text alone cannot be scored: `score(prompt, output)` without
log-probabilities, or `score_steps`, is a ValueError.
"""

from __future__ import annotations

import math

from searchdec.rewards.base import Reward


class MeanLogprob(Reward):
    """exp(mean token log-probability) of an output (its mean log-probability with `log=True`)."""

    uses_logprobs = True

    def __init__(self, *, log: bool = False) -> None:
        super().__init__()
        self.log = bool(log)

    def __repr__(self) -> str:
        return "MeanLogprob(log=True)" if self.log else "MeanLogprob()"

    def _score(self, prompts, outputs, logprobs):
        means = [sum(values) / max(len(values), 1) for values in logprobs]
        return means if self.log else [math.exp(mean) for mean in means]
