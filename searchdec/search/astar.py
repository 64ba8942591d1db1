"""A* search over partial hypotheses: f = g + h, with a reward or PRM on the partial output as the
heuristic (A*-decoding, Chatziveroglou et al., arXiv 2505.13672) or on a greedy lookahead
continuation (NeuroLogic A*esque decoding, Lu et al., arXiv 2112.08726).

g(node) = `weight` * the mean token log-probability of the output so far (length-normalised, so
depth itself is not penalised); h(node) = the `reward` of the text, where text is the output
so far (the reward's `score_steps` over the steps so far, its last score: a PRM scores a partial
solution step by step), or, with `lookahead=L > 0`, the output so far plus its greedy continuation of up to L tokens
(the future the model would write). The open set pops the highest f (ties: the earlier pushed).
Popping an unfinished node expands it into `expansions` sampled next steps (`step`: "token", a
delimiter string or a regex), each scored and pushed; popping a finished node makes it a result.
The search stops after `num_return` results, when the open set is empty, or when the budget is
spent — `budget` tokens forwarded or `reward_budget` heuristic calls — and then returns the best
open node (finish_reason "length") if no result was found. Every prompt pops one node per round;
all expansions and lookaheads of a round are one batched forward per token over the prefix cache,
and the round's new nodes of a prompt are scored in one batch (`score_batch` of their lookahead
texts, or `score_steps` of their steps without lookahead).
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from searchdec.rewards.base import Reward
from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int, text_of
from searchdec.search.expand import Expander
from searchdec.search.sampling import Sample
from searchdec.search.steps import Extension, extend, step_pattern, step_texts
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Work

_NEVER = re.compile(r"(?!)")


@dataclass(frozen=True)
class AStar(Search):
    """Best-first search on f = weight * mean log-probability + heuristic (the `reward`)."""

    reward: Reward | Callable | None = None
    budget: int = 4096
    reward_budget: int | None = None
    expansions: int = 4
    step: object = "\n\n"
    lookahead: int = 0
    weight: float = 1.0
    sample: Sample = field(default_factory=lambda: Sample(temperature=0.8, seed=0))
    num_return: int = 1

    def __post_init__(self) -> None:
        check_positive_int("budget", self.budget)
        check_positive_int("expansions", self.expansions)
        check_positive_int("lookahead", self.lookahead, minimum=0)
        check_positive_int("num_return", self.num_return)
        if self.reward_budget is not None:
            check_positive_int("reward_budget", self.reward_budget)
        step_pattern(self.step)
        self._wrap_reward()

    @property
    def n(self) -> int:
        return self.num_return

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        self._require_reward()
        model = work.model
        expander = Expander(model, work.stopping, work.jump_forward)
        generator = self.sample.generator(model.device)
        pattern = step_pattern(self.step)
        searches = [_Open(root, self, model) for root in roots]
        self._score(expander, work, searches, [(s, s.root) for s in searches])
        while True:
            popped = [(s, s.pop()) for s in searches if s.live()]
            popped = [(s, node) for s, node in popped if node is not None]
            if not popped:
                break
            jobs = [Extension(s.root, node, s.stats) for s, node in popped for _ in range(self.expansions)]
            owners = [s for s, _ in popped for _ in range(self.expansions)]
            ends = extend(expander, jobs, self.sample, generator, pattern)
            seen: set = set()
            fresh = []
            for s, node, job in zip(owners, ends, jobs):
                s.trace.add(node, status="open", parent=job.start)
                key = (id(s), tuple(node.generated()[0]))  # identical samples are one node
                if key not in seen:
                    seen.add(key)
                    fresh.append((s, node))
            self._score(expander, work, searches, fresh)
        expander.release()
        return [s.result() for s in searches]

    def _score(self, expander: Expander, work: Work, searches, items: list[tuple[object, Node]]) -> None:
        model = expander.model
        for s in searches:
            mine = [node for owner, node in items if owner is s]
            if not mine:
                continue
            if self.lookahead:
                todo = [node for node in mine if node.finish_reason is None]
                jobs = [Extension(s.root, node, s.stats) for node in todo]
                ends = extend(expander, jobs, None, None, _NEVER, max_step_tokens=self.lookahead) if jobs else []
                ahead = {id(node): end for node, end in zip(todo, ends)}
                leaves = [ahead.get(id(node), node) for node in mine]
                texts = [text_of(model, leaf) for leaf in leaves]
                hs = work.score(self.reward, s.prompt, texts, [leaf.generated()[1] for leaf in leaves])
            else:
                s.boundaries.update(id(node) for node in mine)
                steps = [step_texts(model, node, s.boundaries) for node in mine]
                hs = [scores[-1] if scores else 0.0 for scores in work.score_steps(self.reward, s.prompt, steps)]
            s.stats.reward_calls += len(mine)
            for node, h in zip(mine, hs):
                g = node.logprob / node.depth if node.depth else 0.0
                s.push(node, self.weight * g + h)


class _Open:
    def __init__(self, root: Node, spec: AStar, model) -> None:
        self.root = root
        self.spec = spec
        self.prompt = model.decode(list(root.new_tokens))
        self.boundaries: set[int] = set()  # ids of step-end nodes (for the steps of a partial output)
        self.heap: list[tuple[float, int, Node]] = []
        self.order = itertools.count()
        self.results: list[tuple[float, Node]] = []
        self.best_open: tuple[float, Node] | None = None
        self.cut: list[tuple[float, Node]] = []  # finished by length (or not accepted)
        self.stats = SearchStats()
        self.trace = Trace("AStar", {"budget": spec.budget, "expansions": spec.expansions}, model.decode)

    def push(self, node: Node, f: float) -> None:
        node.score = f
        heapq.heappush(self.heap, (-f, next(self.order), node))
        self.trace.add(node, score=f, status="open")

    def live(self) -> bool:
        if len(self.results) >= self.spec.num_return:
            return False
        if self.stats.tokens_forwarded >= self.spec.budget:
            return False
        return self.spec.reward_budget is None or self.stats.reward_calls < self.spec.reward_budget

    def pop(self) -> Node | None:
        """The next node to expand; finished nodes popped on the way become results."""
        while self.heap and len(self.results) < self.spec.num_return:
            f, _, node = heapq.heappop(self.heap)
            if node.finish_reason is not None:
                accepting = node.state is None or node.state.accepting or node.state.finished
                if node.finish_reason == "stop" and accepting:
                    self.results.append((-f, node))
                    self.trace.add(node, status="finished")
                else:
                    self.cut.append((-f, node))
                continue
            if self.best_open is None or -f > self.best_open[0]:
                self.best_open = (-f, node)
            self.trace.add(node, status="expanded")
            return node
        return None

    def result(self) -> SearchResult:
        ranked = list(self.results)
        if not ranked:  # nothing complete: the best output cut by length, else the best open node
            candidates = self.cut + [(-f, node) for f, _, node in self.heap if node.finish_reason is not None]
            if not candidates:
                candidates = [(-f, node) for f, _, node in self.heap]
                if self.best_open is not None:
                    candidates.append(self.best_open)
            f, node = max(candidates, key=lambda e: e[0])
            node.finish_reason = node.finish_reason or "length"
            ranked = [(f, node)]
        return SearchResult.ranked(ranked, self.trace, self.stats)
