"""The expansion primitive every search shares: one batched forward over a frontier of nodes through
the prefix cache, returning each node's next-token log-probabilities under its constraint — for the
searches that choose among a frontier's tokens themselves (the beam family, best-first, MCTS's token
children); searches that grow rows use the decoding step (search/rows.py) through their work.

Log-probabilities are `log_softmax` of the unprocessed logits (as transformers' beam search computes
them before any processor); a token a node's constraint forbids gets -inf, without renormalising, so
a constrained hypothesis is scored by the model's own probabilities of the tokens it chose.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from searchdec.grammars.base import apply_masks
from searchdec.search.base import SearchStats
from searchdec.search.rows import Decoder, Stopping, StopText, finish_reason, pending_tokens
from searchdec.search.tree import Node


class Expander:
    """Runs forwards for a search and decides when a node is finished, under one `Stopping`."""

    def __init__(self, model, stopping: Stopping, jump_forward: bool = True) -> None:
        self.model = model
        self.stopping = stopping
        self.jump_forward = jump_forward
        self.decoder = Decoder(model)  # rows grown in this process (search/steps.py)
        self._texts = StopText(model, stopping.stop)
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
        return finish_reason(node, self.stopping, len(root.new_tokens), self._texts)

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
        self.decoder.release_all()
