"""φ-Decoding: foresight sampling — each candidate step valued by rollouts to the end, then sampled.

Reference: Xu et al., "φ-Decoding: Adaptive Foresight Sampling for Balanced Inference-Time Exploration
and Exploitation" (arXiv 2503.13288), as its released code runs it. Semantics, per prompt, keeping
`beams` partial outputs (all the prompt alone at first) with the value q of each (0 at first):
1. Each unfinished beam samples `candidates` next steps (up to and including the first match of
   `step`, at most `max_step_tokens` tokens, or to the output's end).
2. Width pruning (`sigma`): a candidate whose step's mean token log-probability is at most
   mean - sigma * std of the round's candidates is pruned — no foresight —, unless fewer than the
   beams to fill survive: then pruned ones are drawn back by softmax(mean log-probability / 0.1).
3. Foresight: each kept candidate is rolled out to the end (one sample). Its advantage is the
   rollout's mean token log-probability minus its beam's q (a candidate that finished is its own
   rollout, valued by its step's mean log-probability).
4. Alignment: the rollouts are clustered by their final answer — `answer(text)` of the whole output
   (default: the last number in it, as `sd.MBR`'s "exact" utility; an output with no answer joins the
   outputs of identical whitespace-normalized text) —, this implementation's stand-in for the paper's
   TF-IDF k-means over the rollout texts; a candidate's cluster share is its cluster's size over the
   rollouts'.
5. The value of a candidate is (softmax(cluster shares) + softmax(advantages / `tau`)) / 2 over
   the round's kept candidates, and the beams to fill are drawn from it without replacement (seeded);
   each drawn candidate becomes a beam with q = its rollout's mean log-probability. A beam whose step
   finished the output is complete and leaves the beam set.
6. Depth pruning (`agreement`): after at least `min_steps` rounds the search stops once the largest
   cluster holds more than `agreement` of the round's rollouts, or every drawn step is the same text;
   it also stops after `max_steps` rounds. Each beam's output is then the rollout that valued its
   last step (already sampled: no further decoding).
Returned: every beam's output, ranked by the share of the returned outputs that give its answer, then
by its mean token log-probability (the earlier drawn on ties); at most `beams` of them.

Steps and rollouts grow as tasks seeded by their place (`task_seed(sample.seed, prompt, round, ...)`)
and every draw of the search comes from a generator seeded the same way, so a seeded search returns
the same result on every executor. Under a grammar constraint every step and rollout follows it, and
each rollout is steered to close within `max_tokens`. No reward: the model's likelihood and the
rollouts' agreement are the value.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int, text_of
from searchdec.search.mbr import last_number, regex_answer
from searchdec.search.sampling import Sample
from searchdec.search.steps import step_pattern
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Job, Work

REVIVE_TEMPERATURE = 0.1  # pruned candidates are drawn back by softmax(mean log-probability / 0.1), as the reference


@dataclass(frozen=True)
class PhiDecoding(Search):
    """Adaptive foresight sampling over steps (module docstring)."""

    distributable = True

    beams: int = 2
    candidates: int = 4
    max_steps: int = 8
    min_steps: int = 1
    step: object = "\n"
    max_step_tokens: int | None = 64
    sigma: float | None = 1.0
    agreement: float | None = 0.7
    tau: float = 0.1
    answer: str | re.Pattern | Callable[[str], object] | None = None
    sample: Sample = field(default_factory=lambda: Sample(temperature=0.6))

    def __post_init__(self) -> None:
        check_positive_int("beams", self.beams)
        check_positive_int("candidates", self.candidates)
        check_positive_int("max_steps", self.max_steps)
        check_positive_int("min_steps", self.min_steps)
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must be <= max_steps ({self.max_steps})")
        if step_pattern(self.step) is None:
            raise ValueError('step must be a delimiter (a string or a compiled regex), not "token"')
        if self.max_step_tokens is not None:
            check_positive_int("max_step_tokens", self.max_step_tokens)
        for name, low in (("sigma", 0.0), ("agreement", 0.0), ("tau", None)):
            value = getattr(self, name)
            if value is None and name != "tau":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"{name} must be a finite number, got {value!r}")
            if low is not None and value < low:
                raise ValueError(f"{name} must be >= {low:g}, got {value}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0 (the advantages' softmax temperature), got {self.tau}")
        if self.agreement is not None and self.agreement >= 1:
            raise ValueError(f"agreement must be < 1 (a share of the rollouts), got {self.agreement}")
        if isinstance(self.answer, str):
            try:
                re.compile(self.answer)
            except re.error as error:
                raise ValueError(f"answer is not a valid regex: {error}") from None
        elif self.answer is not None and not (isinstance(self.answer, re.Pattern) or callable(self.answer)):
            raise TypeError(f"answer must be a regex or a callable text -> answer, got {type(self.answer).__name__}")
        if not isinstance(self.sample, Sample):
            raise TypeError(f"sample must be sd.Sample(...), got {type(self.sample).__name__}")

    @property
    def n(self) -> int:
        return self.beams

    def key(self, text: str) -> object:
        """The cluster of an output: its answer, else its whitespace-normalized text."""
        extract = last_number if self.answer is None else self.answer if callable(self.answer) else None
        found = extract(text) if extract is not None else regex_answer(self.answer)(text)
        return ("answer", found) if found is not None else ("text", " ".join(text.split()))

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        pattern = step_pattern(self.step)
        base = work.base_seed(self.sample)
        prompts = [_Prompt(i, root, self, work.model) for i, root in enumerate(roots)]
        for round_ in range(self.max_steps):
            active = [p for p in prompts if p.growing]
            if not active:
                break
            jobs, owners, of = [], [], []
            for p in active:
                for b, beam in enumerate(p.beams):
                    if beam.node.finish_reason is None:
                        seeds = [work.seed(base, p.index, round_, "step", b, j) for j in range(self.candidates)]
                        jobs.append(Job(p.root, beam.node, seeds, 0, p.stats))
                        owners.append(p.index)
                        of.append((p, beam))
            steps = work.run(
                jobs, self.sample, to_end=False, step=pattern, max_step_tokens=self.max_step_tokens, owners=owners
            )
            grown: dict[int, list[_Candidate]] = {}
            for (p, beam), result in zip(of, steps):
                grown.setdefault(p.index, []).extend(_Candidate(node, beam) for node in result.rows)
            kept = {
                p.index: p.prune(grown.get(p.index, []), _rng(work, base, p.index, round_, "width"), round_)
                for p in active
            }
            self._foresee(work, base, round_, active, kept)
            for p in active:
                p.select(kept[p.index], _rng(work, base, p.index, round_, "select"), round_)
        return [p.result() for p in prompts]

    def _foresee(self, work: Work, base: int, round_: int, active: list, kept: dict) -> None:
        """Roll each kept unfinished candidate out to the end, all prompts in one `work.run`."""
        jobs, owners, targets = [], [], []
        for p in active:
            for k, candidate in enumerate(kept[p.index]):
                if candidate.node.finish_reason is None:
                    jobs.append(
                        Job(p.root, candidate.node, [work.seed(base, p.index, round_, "foresight", k)], 0, p.stats)
                    )
                    owners.append(p.index)
                    targets.append(candidate)
                else:
                    candidate.rollout = candidate.node
        for candidate, result in zip(targets, work.run(jobs, self.sample, to_end=True, owners=owners)):
            candidate.rollout = result.rows[0]


@dataclass(eq=False)
class _Beam:
    node: Node
    q: float = 0.0  # the mean token log-probability of the rollout that valued its last step
    output: Node | None = None  # that rollout's end


@dataclass(eq=False)
class _Candidate:
    node: Node
    beam: _Beam
    rollout: Node | None = None

    @property
    def step_logprob(self) -> float:
        return _mean(self.node.token_logprobs)

    def rollout_logprob(self) -> float:
        if self.rollout is self.node:
            return self.step_logprob
        return _mean(self.rollout.token_logprobs)


class _Prompt:
    """One prompt's beams, completed outputs, counters and trace."""

    def __init__(self, index: int, root: Node, spec: PhiDecoding, model) -> None:
        self.index = index
        self.root = root
        self.spec = spec
        self.model = model
        self.beams = [_Beam(root) for _ in range(spec.beams)]
        self.completed: list[_Beam] = []
        self.growing = True
        self.stats = SearchStats()
        self.trace = Trace("PhiDecoding", _params(spec), model.decode)
        self.trace.add(root, status="root")

    def prune(self, candidates: list[_Candidate], rng: random.Random, round_: int) -> list[_Candidate]:
        """Width pruning: drop the candidates whose step is unlikely (module docstring, 2)."""
        sigma, need = self.spec.sigma, len(self.beams)
        if sigma is None or len(candidates) <= need:
            return candidates
        values = [c.step_logprob for c in candidates]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        kept = [c for c, v in zip(candidates, values) if v > mean - sigma * std]
        pruned = [c for c, v in zip(candidates, values) if v <= mean - sigma * std]
        if len(kept) < need:
            revived = _draw(rng, [c.step_logprob / REVIVE_TEMPERATURE for c in pruned], need - len(kept))
            kept += [pruned[i] for i in revived]
            pruned = [c for i, c in enumerate(pruned) if i not in set(revived)]
        for c in pruned:
            self.trace.add(c.node, status="pruned", parent=c.beam.node, round=round_, step_logprob=c.step_logprob)
        order = {id(c): k for k, c in enumerate(candidates)}
        return sorted(kept, key=lambda c: order[id(c)])

    def select(self, candidates: list[_Candidate], rng: random.Random, round_: int) -> None:
        """Value the kept candidates by their rollouts' advantage and agreement, draw the next beams,
        and stop when they agree (module docstring, 4-6)."""
        if not candidates:
            self.growing = False
            return
        keys = [self.spec.key(text_of(self.model, c.rollout)) for c in candidates]
        sizes: dict[object, int] = {}
        for key in keys:
            sizes[key] = sizes.get(key, 0) + 1
        shares = [sizes[key] / len(keys) for key in keys]
        advantages = [c.rollout_logprob() - c.beam.q for c in candidates]
        values = [(a + b) / 2 for a, b in zip(_softmax(shares), _softmax([v / self.spec.tau for v in advantages]))]
        chosen = _draw(rng, [math.log(v) if v > 0 else float("-inf") for v in values], len(self.beams))
        for k, c in enumerate(candidates):
            status = "selected" if k in chosen else "foresight"
            extra = {"advantage": advantages[k], "share": shares[k], "step_logprob": c.step_logprob}
            self.trace.add(c.node, score=values[k], status=status, parent=c.beam.node, round=round_, **extra)
        self.beams = []
        for k in chosen:
            c = candidates[k]
            beam = _Beam(c.node, c.rollout_logprob(), c.rollout)
            (self.completed if c.node.finish_reason is not None else self.beams).append(beam)
        agreed = max(shares) > self.spec.agreement if self.spec.agreement is not None else False
        same = len({text_of(self.model, candidates[k].node) for k in chosen}) == 1 and len(chosen) > 1
        if not self.beams or (round_ + 1 >= self.spec.min_steps and (agreed or same)):
            self.growing = False

    def result(self) -> SearchResult:
        outputs = [beam.output for beam in [*self.completed, *self.beams] if beam.output is not None]
        keys = [self.spec.key(text_of(self.model, node)) for node in outputs]
        ranked = []
        for k, (node, key) in enumerate(zip(outputs, keys)):
            share = keys.count(key) / len(keys)
            self.trace.add(node, score=share, status="finished")
            ranked.append((share, _mean(node.generated()[1]), -k, node))
        ranked.sort(key=lambda e: e[:3], reverse=True)
        return SearchResult.ranked([(share, node) for share, _, _, node in ranked], self.trace, self.stats)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    if top == float("-inf"):
        return [1.0 / len(values)] * len(values)
    weights = [math.exp(v - top) for v in values]
    total = sum(weights)
    return [w / total for w in weights]


def _draw(rng: random.Random, logits: Sequence[float], count: int) -> list[int]:
    """`count` distinct indices drawn by softmax(`logits`) without replacement (all of them when fewer),
    in draw order."""
    left = list(range(len(logits)))
    chosen: list[int] = []
    while left and len(chosen) < count:
        weights = _softmax([logits[i] for i in left])
        pick = rng.choices(range(len(left)), weights=weights)[0]
        chosen.append(left.pop(pick))
    return chosen


def _rng(work: Work, base: int, *place: object) -> random.Random:
    return random.Random(work.seed(base, *place))


def _params(spec: PhiDecoding) -> dict:
    step = spec.step.pattern if isinstance(spec.step, re.Pattern) else spec.step
    return {
        "beams": spec.beams,
        "candidates": spec.candidates,
        "max_steps": spec.max_steps,
        "min_steps": spec.min_steps,
        "step": step,
        "sigma": spec.sigma,
        "agreement": spec.agreement,
        "tau": spec.tau,
    }
