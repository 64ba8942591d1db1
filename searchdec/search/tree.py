"""Nodes of the search tree: each holds the tokens it appends to its parent, its log-probabilities
and why it finished. A root holds its prompt. The model layer reads `parent` and `new_tokens` to
find a node's cached prefix; everything else here belongs to the search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Node:
    new_tokens: tuple[int, ...]
    parent: Node | None = None
    token_logprobs: tuple[float, ...] = ()
    finish_reason: str | None = None
    state: Any = None  # the constraint State after this node's tokens (None: unconstrained)
    forced: int = 0  # trailing tokens the grammar fixed, whose log-probabilities the next forward fills in
    closing: int = 0  # tokens the constraint needed to close at the last budget check (search/budget.py)
    score: float | None = None  # a search's own score for this node (beam: float32 cumulative log-probability)
    prompt: Any = None  # a root's prompt as the user gave it (text or chat messages), for searches that re-read it
    backtracks: int = 0  # choices made again on the way here after a check killed a hypothesis (search/rows.py)
    stranded: bool = False  # its parent found no closing walk within the tokens left (search/budget.py)
    logprob: float = field(init=False)
    depth: int = field(init=False)  # generated tokens from the root to here

    def __post_init__(self) -> None:
        if self.parent is None:
            self.logprob, self.depth = 0.0, 0
        else:
            self.logprob = self.parent.logprob + sum(self.token_logprobs)
            self.depth = self.parent.depth + len(self.new_tokens)

    def child(self, tokens: tuple[int, ...], logprobs: tuple[float, ...], forced: int = 0) -> Node:
        """A child appending `tokens`; its constraint state is advanced past them. The last `forced`
        tokens have no log-probability yet (`logprobs` covers the others)."""
        state = self.state.advance_many(list(tokens)) if self.state is not None and tokens else self.state
        return Node(tokens, self, logprobs, state=state, forced=forced)

    def fill_forced(self, logprobs: list[float]) -> None:
        """Record the log-probabilities of the forced tokens once a forward has computed them."""
        if len(logprobs) != self.forced:
            raise ValueError(f"expected {self.forced} log-probabilities, got {len(logprobs)}")
        self.token_logprobs = (*self.token_logprobs, *logprobs)
        self.logprob += sum(logprobs)
        self.forced = 0

    def path(self) -> list[Node]:
        """Nodes from the root's first child down to this one."""
        nodes = []
        node = self
        while node.parent is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def last_tokens(self, k: int) -> list[int]:
        """The last `k` generated tokens (fewer when fewer were generated), walking up only as far as needed."""
        tokens: list[int] = []
        node = self
        while node.parent is not None and len(tokens) < k:
            tokens[:0] = node.new_tokens
            node = node.parent
        return tokens[-k:]

    def generated(self) -> tuple[list[int], list[float]]:
        """Tokens and per-token log-probabilities from the root to here (the prompt excluded)."""
        tokens: list[int] = []
        logprobs: list[float] = []
        for node in self.path():
            tokens.extend(node.new_tokens)
            logprobs.extend(node.token_logprobs)
        return tokens, logprobs
