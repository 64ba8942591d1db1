"""Priority sampling (Grubisic, Cummins, Seeker and Leather, "Priority Sampling of Large Language
Models for Compilers", EuroMLSys 2024, arXiv 2402.18734): `n` unique outputs per prompt in order of
the model's confidence, deterministically, each one expanding the most probable unexpanded branch
of the search tree built so far.

Semantics. The first output is the greedy one. Every decoded output leaves, at each position where
a token was chosen, its `branching` most probable other allowed tokens as unexpanded branches; a
branch's priority is the log-probability of the prefix through it (the prefix's log-probability
plus the alternative token's). Each next output pops the branch of highest priority (ties: the
branch recorded first), appends its token and completes it greedily, recording that path's own
branches. Outputs are therefore unique (each leaves the tree at a branch never taken before) and
come in non-increasing priority; a hypothesis's score is its priority (0.0 for the greedy output,
whose branch is the empty prefix). The priority bounds the output's own log-probability from
above; the log-probabilities of the outputs themselves need not be monotone, since a greedy
completion can be improbable. `branching=None` keeps n - 1 alternatives per position, which makes
the order exact: at most n - 1 branches are ever popped.

Log-probabilities are the model's own (unprocessed, as reported on every hypothesis); under a
constraint the alternatives are the tokens its State allows (the mask applies first), so every
output follows the constraint and greedy is the constrained greedy. Prompts advance in lockstep:
each round pops one branch per prompt and completes them in one batch with the one decoding step
(search/rows.py). The queue keeps only as many branches as outputs remain to be found (no branch
below them can be popped). A branch's prefix is forwarded again from the prompt when it is popped
(one batched forward of its tokens); only the prompts' cache entries are kept between rounds.
A branch token is appended as it is, without the grammar's forced text after it (the greedy
completion then chooses the forced tokens, one forward each: the same tokens and log-probabilities).
Under a constraint, a popped branch from which the output could no longer close within the tokens
left is dropped (the decoding step's budget steering never chooses such a token either).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from searchdec.search import budget
from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int
from searchdec.search.expand import Expander
from searchdec.search.rows import Row, Rule, Stopping, constrain, decode_rows, start_budget
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Work


@dataclass(frozen=True)
class PrioritySampling(Search):
    """`n` unique outputs, the most probable unexpanded branch first (see the module docstring)."""

    n: int = 8
    branching: int | None = None  # alternatives recorded per position (None: n - 1, exact)

    def __post_init__(self) -> None:
        check_positive_int("n", self.n)
        if self.branching is not None:
            check_positive_int("branching", self.branching)

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        model = work.model
        expander = Expander(model, work.stopping, work.jump_forward)
        rule = Rule(work.stopping, work.jump_forward)
        keep = self.n - 1 if self.branching is None else self.branching
        stats = [SearchStats() for _ in roots]
        found: list[list[tuple[float, Node]]] = [[] for _ in roots]
        queues: list[list[tuple]] = [
            [(-0.0, 0, root, None, 0.0)] for root in roots
        ]  # (-priority, order, at, token, lp)
        count = 1

        def record(row: Row) -> None:
            """Push the alternatives to the token `row` just chose (at its node's parent)."""
            nonlocal count
            if keep == 0:
                return
            at = row.node.parent
            allowed = row.logprobs if at.state is None else constrain(row.logprobs.unsqueeze(0).clone(), [at])[0]
            values, tokens = allowed.topk(min(keep + 1, allowed.numel()))
            chosen = row.node.new_tokens[0]
            queue = queues[row.owner]
            for value, token in zip(values.tolist(), tokens.tolist()):
                if token != chosen and value != float("-inf"):
                    heapq.heappush(queue, (-(at.logprob + value), count, at, token, value))
                    count += 1

        for root in roots:
            start_budget(root, work.stopping)
        try:
            while True:
                rows, branches = [], []
                for i, root in enumerate(roots):
                    if len(found[i]) >= self.n or not queues[i]:
                        continue
                    negative, _, at, token, value = heapq.heappop(queues[i])
                    start = root if token is None else self._branch(at, token, value, root, work.stopping)
                    if start is None:
                        continue
                    reason = None if token is None else expander.finish_reason(start, root)
                    if reason is not None:
                        start.finish_reason = reason
                        found[i].append((-negative, start))
                        continue
                    rows.append(Row(start, start, len(root.new_tokens), rule, None, None, stats[i], owner=i))
                    branches.append(-negative)
                if not rows and all(len(f) >= self.n or not q for f, q in zip(found, queues)):
                    break
                if rows:
                    decode_rows(expander.decoder, rows, on_token=record)
                for row, priority in zip(rows, branches):
                    found[row.owner].append((priority, row.node))
                    if row.start.parent is not None:
                        model.cache.discard(row.start)  # a branch's start; the prompt's entry stays
                for i, queue in enumerate(queues):
                    left = self.n - len(found[i])
                    if len(queue) > left:  # only `left` more pops: the branches below them never come up
                        queues[i] = heapq.nsmallest(left, queue)
                        heapq.heapify(queues[i])
        finally:
            expander.release()
            for root in roots:
                model.cache.discard(root)
        return [self._result(model, root, f, s) for root, f, s in zip(roots, found, stats)]

    @staticmethod
    def _branch(at: Node, token: int, logprob: float, root: Node, stopping: Stopping) -> Node | None:
        """The node appending the popped branch's token to its prefix; None when a constrained
        output could no longer close within the tokens left from it (budget.py: the decoding step
        never chooses such a token either)."""
        start = at.child((token,), (logprob,))
        start.closing = at.closing
        if start.state is None or at.closing < 0 or start.state.finished or token in stopping.eos_token_ids:
            return start
        room = None if stopping.context_window is None else stopping.context_window - len(root.new_tokens)
        found = start.state.closing(budget.tokens_left(start, stopping.max_tokens, room))
        if found is None:
            return None
        start.closing = found[0]
        return start

    def _result(self, model, root: Node, found: list[tuple[float, Node]], stats: SearchStats) -> SearchResult:
        trace = Trace("PrioritySampling", {"n": self.n, "branching": self.branching}, model.decode)
        trace.add(root, status="root")
        for priority, leaf in found:
            trace.add(leaf, score=priority, status="finished" if leaf.finish_reason == "stop" else "pruned")
        return SearchResult.ranked(found, trace, stats)
