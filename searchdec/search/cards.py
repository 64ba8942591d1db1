"""CARDS: cascade reward sampling, segment-level rejection sampling cut at model-uncertainty spikes.

Reference: Li, Wang, Grama and Zhang, "Cascade Reward Sampling for Efficient Decoding-Time Alignment"
(arXiv 2406.16306). Semantics, per prompt, from the accepted prefix (at first the prompt alone):
1. `candidates` segments are sampled from the accepted prefix (1: the paper's one at a time). A segment
   ends *before* the first token whose next-token distribution has an entropy of at least `entropy`
   nats, once it holds `min_segment` tokens — the uncertain token opens the next segment, as in the
   paper, where a new semantic unit begins where the model is unsure —, or after `max_segment`
   tokens, the first match of `step` (a delimiter, when given), or the output's end. The entropy is
   the model's, over the tokens the constraint allows (renormalized), before temperature: the rule
   is `Rule.step_entropy` of the one decoding step (search/rows.py).
2. The candidates are scored in one batch by `reward(prompt_text, prefix_and_segment_text)`, a reward
   on the partial text, with their token log-probabilities.
3. The threshold rises with the prefix: r0 = (1 - alpha) * reward(prompt, "") + alpha *
   `reward_threshold` (or `start`, when given), and a candidate of t generated tokens (prefix and
   segment) faces tau(t) = min(reward_threshold, r0 + t * (reward_threshold - r0) / max_tokens).
   Acceptance (`acceptance`): "hard", reward >= tau(t); "soft" (the paper's default), with
   probability min(1, exp((reward - tau(t)) / beta)), each draw from a generator seeded by the
   candidate's place. The first accepted candidate, in sample order, becomes the prefix; those after
   it go unused (so `candidates` > 1 returns what drawing them one by one would, sampling a few
   segments more).
4. Rejected segments are regenerated; after `retries` rejections since the last accepted segment the
   best candidate seen in that time (highest reward; the earlier on ties) is kept as if accepted.
5. A kept candidate that finished (end of sequence, `max_tokens`) ends the search: its text is the
   output, its reward the score. One hypothesis per prompt.

Segments grow as tasks (candidate j of attempt round r of prompt i draws with the seed
`task_seed(sample.seed, i, r, j)`), so a seeded search returns the same result on every executor.
Under a grammar constraint every segment follows it and the step's budget steering closes it within
`max_tokens`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from searchdec.rewards.base import Reward
from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int, text_of
from searchdec.search.sampling import Sample
from searchdec.search.steps import step_pattern
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.treebon import NO_DELIMITER
from searchdec.search.work import Job, Work

ACCEPTANCE = ("hard", "soft")


@dataclass(frozen=True)
class CARDS(Search):
    """Segment-level rejection sampling against a rising reward threshold (module docstring)."""

    distributable = True

    reward: Reward | Callable[[str, str], float] | None = None
    reward_threshold: float | None = None
    alpha: float = 0.5
    start: float | None = None
    acceptance: str = "soft"
    beta: float = 0.7
    entropy: float = 3.0
    min_segment: int = 4
    max_segment: int = 64
    retries: int = 20
    candidates: int = 1
    step: object = None
    sample: Sample = field(default_factory=lambda: Sample(temperature=0.7))

    def __post_init__(self) -> None:
        if self.reward_threshold is None:
            raise ValueError("CARDS needs reward_threshold= (the reward a whole output should reach)")
        for name in ("reward_threshold", "alpha", "beta", "entropy", *(("start",) if self.start is not None else ())):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {self.alpha}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0 (the soft acceptance's temperature), got {self.beta}")
        if self.entropy < 0:
            raise ValueError(f"entropy must be >= 0 nats, got {self.entropy}")
        if self.acceptance not in ACCEPTANCE:
            raise ValueError(f"acceptance must be one of {', '.join(map(repr, ACCEPTANCE))}, got {self.acceptance!r}")
        check_positive_int("min_segment", self.min_segment)
        check_positive_int("max_segment", self.max_segment)
        check_positive_int("retries", self.retries)
        check_positive_int("candidates", self.candidates)
        if self.min_segment > self.max_segment:
            raise ValueError(f"min_segment ({self.min_segment}) must be <= max_segment ({self.max_segment})")
        if self.step is not None:
            step_pattern(self.step)
        if not isinstance(self.sample, Sample):
            raise TypeError(f"sample must be sd.Sample(...), got {type(self.sample).__name__}")
        self._wrap_reward()

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        self._require_reward()
        pattern = NO_DELIMITER if self.step is None else step_pattern(self.step)
        base = work.base_seed(self.sample)
        prompts = [_Prompt(i, root, self, work) for i, root in enumerate(roots)]
        attempt = 0
        while True:
            active = [p for p in prompts if p.output is None]
            if not active:
                break
            jobs = [
                Job(
                    p.root, p.prefix, [work.seed(base, p.index, attempt, j) for j in range(self.candidates)], 0, p.stats
                )
                for p in active
            ]
            results = work.run(
                jobs,
                self.sample,
                to_end=False,
                step=pattern,
                max_step_tokens=self.max_segment,
                owners=[p.index for p in active],
                step_entropy=self.entropy,
                min_step_tokens=self.min_segment,
            )
            for p, result in zip(active, results):
                p.judge(result.rows, random.Random(work.seed(base, p.index, attempt, "accept")), attempt)
            attempt += 1
        return [p.result() for p in prompts]

    def threshold(self, start: float, generated: int, max_tokens: int) -> float:
        """tau(t): the threshold a candidate of `generated` tokens faces, rising from `start`."""
        target = float(self.reward_threshold)
        return min(target, start + generated * (target - start) / max_tokens)

    def accepts(self, reward: float, threshold: float, rng: random.Random) -> bool:
        if self.acceptance == "hard":
            return reward >= threshold
        if reward == float("-inf"):
            return False
        return rng.random() < min(1.0, math.exp(min(0.0, (reward - threshold) / self.beta)))


class _Prompt:
    """One prompt's accepted prefix, the candidates rejected since, counters and trace."""

    def __init__(self, index: int, root: Node, spec: CARDS, work: Work) -> None:
        self.index = index
        self.root = root
        self.prefix = root
        self.spec = spec
        self.work = work
        self.model = work.model
        self.text = self.model.decode(list(root.new_tokens))
        self.stats = SearchStats()
        self.trace = Trace("CARDS", _params(spec), self.model.decode)
        self.trace.add(root, status="root")
        self.rejected = 0
        self.best: tuple[float, Node] | None = None  # the best candidate since the last kept segment
        self.output: tuple[float, Node] | None = None
        self.start = self._start()

    def _start(self) -> float:
        """r0: the threshold at the first token (from the reward of the empty output, as the paper)."""
        spec = self.spec
        if spec.start is not None:
            empty = float(spec.start)
        else:
            empty = self.work.score(spec.reward, self.text, [""], [[]])[0]
            self.stats.reward_calls += 1
            if not math.isfinite(empty):
                raise ValueError(
                    f"CARDS: the reward of the empty output is {empty} for prompt {self.index}, so the threshold "
                    "cannot start from it; give start= (the threshold's value at the first token)"
                )
        return (1 - spec.alpha) * empty + spec.alpha * float(spec.reward_threshold)

    def judge(self, candidates: list[Node], rng: random.Random, attempt: int) -> None:
        """Score the attempt's candidates in one batch; keep the first accepted one, or, past the retry
        cap, the best seen since the last kept segment."""
        spec = self.spec
        texts = [text_of(self.model, node) for node in candidates]
        logprobs = [node.generated()[1] for node in candidates]
        scores = self.work.score(spec.reward, self.text, texts, logprobs)
        self.stats.reward_calls += len(candidates)
        max_tokens = self.work.stopping.max_tokens
        kept = None
        for node, score in zip(candidates, scores):
            node.score = score
            tau = spec.threshold(self.start, node.depth, max_tokens)
            if kept is None and spec.accepts(score, tau, rng):
                kept = node
                self.trace.add(node, score=score, status="accepted", parent=self.prefix, round=attempt, threshold=tau)
                continue
            status = "rejected" if kept is None else "unused"  # sampled beside the first accepted one
            self.trace.add(node, score=score, status=status, parent=self.prefix, round=attempt, threshold=tau)
            if kept is None:
                self.rejected += 1
                if self.best is None or score > self.best[0]:
                    self.best = (score, node)
        if kept is None and self.rejected >= spec.retries:
            kept = self.best[1]
            self.trace.add(kept, status="kept after retries")
        if kept is not None:
            self._keep(kept)

    def _keep(self, node: Node) -> None:
        self.prefix = node
        self.rejected = 0
        self.best = None
        if node.finish_reason is not None:
            self.output = (node.score, node)
            self.trace.add(node, status="finished")

    def result(self) -> SearchResult:
        return SearchResult.ranked([self.output], self.trace, self.stats)


def _params(spec: CARDS) -> dict:
    step = spec.step.pattern if isinstance(spec.step, re.Pattern) else spec.step
    return {
        "reward_threshold": spec.reward_threshold,
        "alpha": spec.alpha,
        "acceptance": spec.acceptance,
        "entropy": spec.entropy,
        "min_segment": spec.min_segment,
        "max_segment": spec.max_segment,
        "retries": spec.retries,
        "candidates": spec.candidates,
        "step": step,
    }
