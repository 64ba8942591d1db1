"""The decoding loop of `Greedy` and `Sample`: every unfinished hypothesis of every prompt is one row
of a single batched forward per step; a finished one leaves the batch. Each step appends one token
per row; the prefix cache makes that a one-token forward, and the parent's cache entry is dropped
once its only child exists (these decoders never revisit a node).

A hypothesis finishes with "stop" on an end-of-sequence token or a stop string, and with "length"
at `max_tokens` generated tokens or at the model's context window. Under a constraint, each row's
logits are masked by its node's State before choosing (reported log-probabilities stay those of the
unmasked model), and a constrained hypothesis may only stop where its grammar accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from searchdec.grammars.state import apply_masks
from searchdec.search.sampling import Greedy, Sample
from searchdec.search.tree import Node


@dataclass(frozen=True)
class Stopping:
    max_tokens: int
    eos_token_ids: frozenset[int]
    stop: tuple[str, ...] = ()
    context_window: int | None = None


def decode(
    model,
    roots: list[Node],
    search: Greedy | Sample,
    stopping: Stopping,
    on_token: Callable[[int, Node], None] | None = None,
) -> list[list[Node]]:
    """Leaves of each root, `search.n` per root, each with its `finish_reason` set."""
    leaves: list[list[Node]] = [[] for _ in roots]
    if stopping.max_tokens == 0:
        for i, root in enumerate(roots):
            for _ in range(search.n):
                leaf = root.child((), ())
                leaf.finish_reason = "length"
                leaves[i].append(leaf)
        return leaves
    generator = search.generator(model.device) if isinstance(search, Sample) else None
    texts = _StopText(model, stopping.stop)

    # The first step reads each prompt once and draws n tokens from it.
    logits = model.logits(roots)
    active: list[tuple[int, Node]] = []
    logprobs = logits.log_softmax(dim=-1)
    tokens = _choose(search, _constrained(logits, roots), generator, search.n)
    logprobs = logprobs.gather(-1, tokens)
    for i, root in enumerate(roots):
        for j in range(search.n):
            active.append((i, root.child((int(tokens[i, j]),), (float(logprobs[i, j]),))))

    while True:
        still: list[tuple[int, Node]] = []
        for owner, node in active:
            if on_token is not None:
                on_token(owner, node)
            reason = _finished(node, stopping, len(roots[owner].new_tokens), texts)
            if reason is None:
                still.append((owner, node))
            else:
                node.finish_reason = reason
                leaves[owner].append(node)
                if node.parent.parent is not None:  # a root may still serve the node's siblings
                    model.cache.discard(node.parent)
        if not still:
            for root in roots:
                model.cache.discard(root)
            break
        nodes = [node for _, node in still]
        logits = model.logits(nodes)
        logprobs = logits.log_softmax(dim=-1)
        tokens = _choose(search, _constrained(logits, nodes), generator, 1)
        logprobs = logprobs.gather(-1, tokens)
        active = []
        for row, (owner, node) in enumerate(still):
            model.cache.discard(node.parent)
            active.append((owner, node.child((int(tokens[row, 0]),), (float(logprobs[row, 0]),))))
    return leaves


def _constrained(logits: torch.Tensor, nodes: list[Node]) -> torch.Tensor:
    """Logits with every token a node's constraint forbids set to -inf (in place)."""
    if nodes[0].state is None:
        return logits
    return apply_masks(logits, [node.state for node in nodes])


def _choose(search, logits: torch.Tensor, generator, samples: int) -> torch.Tensor:
    if isinstance(search, Greedy):
        return logits.argmax(dim=-1, keepdim=True).expand(-1, samples)
    return search.draw(logits, generator, samples)


def _finished(node: Node, stopping: Stopping, prompt_length: int, texts: _StopText) -> str | None:
    if node.new_tokens[-1] in stopping.eos_token_ids:
        return "stop"
    if node.state is not None and node.state.finished:
        return "stop"  # the grammar admits nothing more (end-of-sequence was its only option)
    if stopping.stop and texts.hit(node):
        return "stop"
    if node.depth >= stopping.max_tokens:
        return "length"
    if stopping.context_window is not None and prompt_length + node.depth >= stopping.context_window:
        return "length"
    return None


class _StopText:
    """Finds a stop string completed by the newest token: only the last few tokens can hold it (a
    string of c characters spans at most 4c single-byte tokens), so only they are decoded."""

    def __init__(self, model, stop: tuple[str, ...]) -> None:
        self.model = model
        self.stop = stop
        self.window = 4 * max((len(s) for s in stop), default=0) + 2

    def hit(self, node: Node) -> bool:
        text = self.model.decode(node.last_tokens(self.window))
        return any(s in text for s in self.stop)
