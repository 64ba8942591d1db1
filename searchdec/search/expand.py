"""The expansion primitive every search shares: one batched forward over a frontier of nodes through
the prefix cache, returning each node's next-token log-probabilities under its constraint, plus the
records a search hands back (`SearchResult`, `SearchStats`).

Log-probabilities are `log_softmax` of the unprocessed logits (as transformers' beam search computes
them before any processor); a token a node's constraint forbids gets -inf, without renormalising, so
a constrained hypothesis is scored by the model's own probabilities of the tokens it chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from searchdec.grammars.state import apply_masks
from searchdec.search.decode import Stopping, _finished, _StopText
from searchdec.search.tree import Node


@dataclass
class SearchStats:
    """What a search cost. `expansions` counts nodes whose next-token distribution was computed;
    `tokens_forwarded` counts tokens fed through the network for this prompt (the prefix cache
    makes an expansion of a child cost its own new tokens only); `reward_calls` counts reward
    evaluations."""

    expansions: int = 0
    tokens_forwarded: int = 0
    reward_calls: int = 0
    generated_tokens: int = 0  # tokens in the returned hypotheses

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    """One prompt's outcome: finished leaves ranked best first with their ranking scores."""

    leaves: list[Node]
    scores: list[float]
    trace: object = None
    stats: SearchStats = field(default_factory=SearchStats)

    @classmethod
    def ranked(cls, ranked: list[tuple[float, Node]], trace, stats: SearchStats) -> SearchResult:
        """The result of (score, leaf) pairs already in rank order: the trace marks the winner and
        carries the stats, which count the returned leaves' tokens."""
        leaves = [node for _, node in ranked]
        if leaves:
            trace.set_best(leaves[0])
        stats.generated_tokens = sum(node.depth for node in leaves)
        trace.stats = stats.as_dict()
        return cls(leaves, [score for score, _ in ranked], trace, stats)


class Expander:
    """Runs forwards for a search and decides when a node is finished, under one `Stopping`."""

    def __init__(self, model, stopping: Stopping) -> None:
        self.model = model
        self.stopping = stopping
        self._texts = _StopText(model, stopping.stop)
        self._touched: dict[int, Node] = {}  # nodes that may hold a cache entry

    def logprobs(self, nodes: Sequence[Node], stats: Sequence[SearchStats] | None = None) -> torch.Tensor:
        """Next-token log-probabilities [len(nodes), vocab] (float32), forbidden tokens -inf. When
        `stats` is given (one per node), each node's expansion and forwarded tokens are added to it."""
        if stats is not None:
            for node, s in zip(nodes, stats):
                s.expansions += 1
                s.tokens_forwarded += pending_tokens(self.model, node)
        logits = self.model.logits(list(nodes))
        for node in nodes:
            self._touched[id(node)] = node
        logprobs = logits.log_softmax(dim=-1)
        if nodes[0].state is not None:
            logprobs = apply_masks(logprobs, [node.state for node in nodes])
        return logprobs

    def finish_reason(self, node: Node, root: Node) -> str | None:
        """ "stop", "length" or None (the node can still grow)."""
        return _finished(node, self.stopping, len(root.new_tokens), self._texts)

    def room(self, node: Node, root: Node) -> int:
        """Tokens `node` may still generate before max_tokens or the context window."""
        left = self.stopping.max_tokens - node.depth
        if self.stopping.context_window is not None:
            left = min(left, self.stopping.context_window - len(root.new_tokens) - node.depth)
        return left

    def discard(self, nodes) -> None:
        for node in nodes:
            self.model.cache.discard(node)
            self._touched.pop(id(node), None)

    def release(self) -> None:
        """Drop every cache entry this search's forwards made (call when the search ends)."""
        self.discard(list(self._touched.values()))


def pending_tokens(model, node: Node) -> int:
    """Tokens a forward of `node` would feed: those after its nearest cached ancestor (at least one)."""
    count = 0
    current = node
    while current is not None and current not in model.cache:
        count += len(current.new_tokens)
        current = current.parent
    return max(count, 1)


def check_positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def text_of(model, node: Node) -> str:
    """The generated text from the root to `node` (end-of-sequence tokens left out)."""
    tokens, _ = node.generated()
    return model.decode([t for t in tokens if t not in model.eos_token_ids])
