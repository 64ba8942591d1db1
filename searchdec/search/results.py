"""What `generate` returns: a `Generation` per prompt (its best hypothesis, plus all of them ranked,
the search's trace and stats). Declared with the searches so any layer above them can build one."""

from __future__ import annotations

from dataclasses import dataclass, field

from searchdec.search.base import SearchStats
from searchdec.search.trace import Trace


@dataclass
class Hypothesis:
    """One finished output: its text, generated token ids (with a final end-of-sequence token, which
    the text leaves out), the log-probability of each token under the model and their sum."""

    text: str
    tokens: list[int]
    token_logprobs: list[float]
    logprob: float
    finish_reason: str  # "stop" | "length"
    score: float | None = None  # the search's ranking score (beam: length-normalised log-probability)
    weight: float | None = None  # a weighted search's normalised importance weight (sd.SMC; they sum to 1)


@dataclass
class Generation(Hypothesis):
    """The best hypothesis for one prompt, plus all hypotheses in rank order (`n` of them)."""

    hypotheses: list[Hypothesis] = field(default_factory=list)
    prompt_tokens: int = 0
    trace: Trace | None = None  # the search tree (searches other than Greedy/Sample): .to_json(), .to_html()
    stats: SearchStats | None = None  # expansions, tokens forwarded, reward calls
