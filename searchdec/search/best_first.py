"""Best-first beam search: Meister, Vieira and Cotterell, "Best-First Beam Search" (TACL 2020,
arXiv 2007.03909). It returns what `Beam(width, length_penalty=0.0)` returns (any early_stopping
other than True), with no more node expansions, by popping hypotheses from one priority queue in
order of score instead of advancing a whole beam per step.

Exact semantics. The score is the cumulative log-probability (monotone: a child never scores above
its parent), computed in float32 as `Beam` does. Every hypothesis of depth d is a candidate; the
queue pops the highest score first (ties: the earlier pushed). A popped candidate of depth d takes
the next rank r at depth d. As in transformers' beam search (see `beam.py`), a finished candidate
(end-of-sequence, grammar end, stop string, max_tokens) is a result when r < width; an unfinished
one is admitted to the beam at depth d, and expanded, while fewer than `width` unfinished ones have
been admitted there and r < K = max(2, 1 + #eos) * width. Since pops come in decreasing score, the
first result popped is the best hypothesis of beam search, and the first `num_return` are its top
`num_return` (under a constraint, only accepting ones count; cut ones are the fallback, as in
`Beam`). Each expansion pushes the node's K best children (no other child can rank within K).

Expansions are batched without changing the order: each round pops, per prompt, the best
candidates while they share one depth (a child is one deeper than its parent, so it cannot take a
rank from a candidate popped in the same round); all prompts' rounds are one forward. A node's
cache entry is dropped once all its pushed children have been popped or the search ends.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from dataclasses import dataclass

import torch

from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int
from searchdec.search.beam import root_leaf
from searchdec.search.expand import Expander
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Work


@dataclass(frozen=True)
class BestFirstBeam(Search):
    """Best-first beam search of `width` (equal to `Beam(width, length_penalty=0.0)`)."""

    width: int = 4
    num_return: int = 1
    max_batch: int | None = None  # rows per prompt per forward (None: `width`)

    def __post_init__(self) -> None:
        check_positive_int("width", self.width)
        check_positive_int("num_return", self.num_return)
        if self.num_return > self.width:
            raise ValueError(f"num_return ({self.num_return}) must be <= width ({self.width})")
        if self.max_batch is not None:
            check_positive_int("max_batch", self.max_batch)

    @property
    def n(self) -> int:
        return self.num_return

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        model, stopping = work.model, work.stopping
        expander = Expander(model, stopping)
        k = max(2, 1 + len(stopping.eos_token_ids)) * self.width
        searches = [_Queue(root, self, model, k) for root in roots]
        if stopping.max_tokens == 0:
            for s in searches:
                s.results.append((0.0, root_leaf(s.root)))
                s.open = False
        else:
            logprobs = expander.logprobs(roots, [s.stats for s in searches])
            for row, s in enumerate(searches):
                s.push_children(s.root, logprobs[row])
        while True:
            batches = [(s, s.pop_round(expander)) for s in searches if s.open]
            batches = [(s, nodes) for s, nodes in batches if nodes]
            if not batches:
                break
            nodes = [node for _, batch in batches for node in batch]
            stats = [s.stats for s, batch in batches for _ in batch]
            logprobs = expander.logprobs(nodes, stats)
            row = 0
            for s, batch in batches:
                for node in batch:
                    s.push_children(node, logprobs[row])
                    s.release(node.parent, expander)
                    row += 1
        for s in searches:
            s.close(expander)
        return [s.result() for s in searches]


class _Queue:
    """One prompt's priority queue, ranks per depth and results."""

    def __init__(self, root: Node, spec: BestFirstBeam, model, k: int) -> None:
        self.root = root
        self.spec = spec
        self.k = k
        self.heap: list[tuple[float, int, Node, float]] = []
        self.order = itertools.count()
        self.ranked: dict[int, int] = defaultdict(int)
        self.admitted: dict[int, int] = defaultdict(int)
        self.children_left: dict[int, int] = {}  # id(node) -> pushed children not yet popped
        self.live: dict[int, Node] = {id(root): root}
        self.results: list[tuple[float, Node]] = []
        self.cut: list[tuple[float, Node]] = []
        self.open = True
        self.stats = SearchStats()
        self.trace = Trace("BestFirstBeam", {"width": spec.width, "num_return": spec.num_return}, model.decode)
        self.trace.add(root, score=0.0, status="root")

    def push_children(self, node: Node, logprobs: torch.Tensor) -> None:
        score = torch.tensor(_score(node), dtype=torch.float32, device=logprobs.device)
        totals = logprobs + score
        values, tokens = torch.topk(totals, min(self.k, totals.numel()))
        children = 0
        for total, token, lp in zip(values.tolist(), tokens.tolist(), logprobs[tokens].tolist()):
            if total == float("-inf"):
                break
            child = node.child((token,), (lp,))
            child.score = total
            heapq.heappush(self.heap, (-total, next(self.order), child, total))
            children += 1
        self.children_left[id(node)] = children
        self.live[id(node)] = node

    def pop_round(self, expander: Expander) -> list[Node]:
        """The next candidates to expand, all of one depth; results found on the way are recorded."""
        batch: list[Node] = []
        limit = self.spec.max_batch or self.spec.width
        depth = None
        while self.heap and len(batch) < limit:
            if depth is not None and self.heap[0][2].depth != depth:
                break
            _, _, node, total = heapq.heappop(self.heap)
            d = node.depth
            rank = self.ranked[d]
            self.ranked[d] += 1
            reason = expander.finish_reason(node, self.root)
            if reason is not None:
                self.release(node.parent, expander)
                if rank >= self.spec.width:
                    continue
                node.finish_reason = reason
                self.trace.add(node, score=total, status="finished")
                accepting = node.state is None or node.state.accepting or node.state.finished
                if node.state is not None and not (reason == "stop" and accepting):
                    self.cut.append((total, node))
                    continue
                self.results.append((total, node))
                if len(self.results) >= self.spec.num_return:
                    self.open = False
                    break
                continue
            if self.admitted[d] >= self.spec.width or rank >= self.k:
                self.release(node.parent, expander)
                continue
            self.admitted[d] += 1
            self.trace.add(node, score=total, status="beam")
            batch.append(node)
            depth = d
        if not self.heap and not batch:
            self.open = False
        return batch

    def release(self, parent: Node | None, expander: Expander) -> None:
        """One pushed child of `parent` is settled; its entry goes once none is left."""
        if parent is None or id(parent) not in self.children_left:
            return
        self.children_left[id(parent)] -= 1
        if self.children_left[id(parent)] <= 0:
            del self.children_left[id(parent)]
            expander.model.cache.discard(self.live.pop(id(parent)))

    def close(self, expander: Expander) -> None:
        expander.discard(self.live.values())
        self.live.clear()
        self.children_left.clear()
        self.heap.clear()

    def result(self) -> SearchResult:
        ranked = list(self.results)
        if len(ranked) < self.spec.num_return:
            ranked += sorted(self.cut, key=lambda entry: -entry[0])[: self.spec.num_return - len(ranked)]
        return SearchResult.ranked(ranked, self.trace, self.stats)


def _score(node: Node) -> float:
    return 0.0 if node.score is None else node.score
