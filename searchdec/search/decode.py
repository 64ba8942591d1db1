"""The decoding loop of `Greedy` and `Sample`: every unfinished hypothesis of every prompt is one row
of a single batched forward per step; a finished one leaves the batch. Each step appends one token
per row; the prefix cache makes that a one-token forward, and the parent's cache entry is dropped
once its only child exists (these decoders never revisit a node).

A hypothesis finishes with "stop" on an end-of-sequence token or a stop string, and with "length"
at `max_tokens` generated tokens or at the model's context window. Under a constraint, each row's
logits are masked by its node's State before choosing (reported log-probabilities stay those of the
unmasked model), a constrained hypothesis may only stop where its grammar accepts, and it is steered
to close within the tokens left (search/budget.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from searchdec.grammars.state import apply_masks
from searchdec.search import budget
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
    jump_forward: bool = True,
    first: int | None = None,
) -> list[list[Node]]:
    """Leaves of each root, `search.n` per root, each with its `finish_reason` set. With `first`, a
    root stops decoding once `first` of its hypotheses have finished with "stop": the others are cut
    where they are and finish with "length" (first-finish search)."""
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

    def expand(node: Node, prompt_length: int, token: int, logprobs: torch.Tensor, masked: torch.Tensor) -> Node:
        return extend_closable(node, token, logprobs, masked, search, generator, stopping, prompt_length, jump_forward)

    # The first step reads each prompt once and draws n tokens from it.
    for root in roots:
        start_budget(root, stopping)
    logits = model.logits(roots)
    active: list[tuple[int, Node]] = []
    logprobs = logits.log_softmax(dim=-1)
    masked = _constrained(logits, roots)
    tokens = _choose(search, masked, generator, search.n)
    for i, root in enumerate(roots):
        for j in range(search.n):
            child = expand(root, len(root.new_tokens), int(tokens[i, j]), logprobs[i], masked[i])
            active.append((i, child))

    while True:
        still: list[tuple[int, Node]] = []
        for owner, node in active:
            if on_token is not None:
                on_token(owner, node)
            reason = _finished(node, stopping, len(roots[owner].new_tokens), texts)
            if reason is None:
                still.append((owner, node))
            else:
                _retire(model, node, reason, leaves[owner])
        if first is not None:
            still = _cut_when_done(model, still, leaves, first)
        if not still:
            _fill_forced_logprobs(model, [leaf for owner_leaves in leaves for leaf in owner_leaves if leaf.forced])
            for root in roots:
                model.cache.discard(root)
            break
        nodes = [node for _, node in still]
        logits = _forward(model, nodes)
        logprobs = logits.log_softmax(dim=-1)
        masked = _constrained(logits, nodes)
        tokens = _choose(search, masked, generator, 1).tolist()
        active = []
        for row, (owner, node) in enumerate(still):
            model.cache.discard(node.parent)
            child = expand(node, len(roots[owner].new_tokens), tokens[row][0], logprobs[row], masked[row])
            active.append((owner, child))
    return leaves


def _cut_when_done(model, still: list[tuple[int, Node]], leaves: list[list[Node]], first: int) -> list:
    """`still` without the hypotheses of roots that have `first` finished ones; those are cut."""
    done = {owner for owner, _ in still if sum(leaf.finish_reason == "stop" for leaf in leaves[owner]) >= first}
    if not done:
        return still
    for owner, node in still:
        if owner in done:
            _retire(model, node, "length", leaves[owner])
    return [(owner, node) for owner, node in still if owner not in done]


def _retire(model, node: Node, reason: str, leaves: list[Node]) -> None:
    """Finish `node` as a leaf and drop its parent's cache entry (a root may still serve the node's
    siblings; forced tokens still need their parent for their log-probabilities)."""
    node.finish_reason = reason
    leaves.append(node)
    if node.parent.parent is not None and not node.forced:
        model.cache.discard(node.parent)


def start_budget(root: Node, stopping: Stopping) -> None:
    """Measure what closing a constrained root costs, before its first token (search/budget.py)."""
    if root.state is not None:
        room = None if stopping.context_window is None else stopping.context_window - len(root.new_tokens)
        budget.start(root, stopping.max_tokens, room)


def extend_closable(
    node: Node,
    token: int,
    logprobs: torch.Tensor,
    masked: torch.Tensor,
    search,
    generator,
    stopping: Stopping,
    prompt_length: int,
    jump_forward: bool,
) -> Node:
    """The child of `node` for the chosen `token` (with forced tokens, see `_extend`), kept closable
    within the budget under a constraint: `masked` is the row `token` was chosen from, `logprobs` the
    unprocessed log-probabilities reported for whichever token is kept."""
    child = _extend(node, token, float(logprobs[token]), stopping, prompt_length, jump_forward)
    if node.state is None:
        return child
    room = None if stopping.context_window is None else stopping.context_window - prompt_length
    return budget.keep_closable(
        node,
        child,
        masked,
        lambda t: _extend(node, t, float(logprobs[t]), stopping, prompt_length, jump_forward),
        lambda row: int(_choose(search, row.unsqueeze(0), generator, 1)[0, 0]),
        stopping.max_tokens,
        room,
        stopping.eos_token_ids,
    )


def _extend(node: Node, token: int, logprob: float, stopping: Stopping, prompt_length: int, jump_forward: bool) -> Node:
    """The child of `node` with `token`, plus the tokens its grammar then forces (jump-forward), as
    many as the token budget leaves room for. Forced tokens cost no forward pass of their own."""
    child = node.child((token,), (logprob,))
    if not jump_forward or child.state is None or child.state.finished or token in stopping.eos_token_ids:
        return child
    forced = child.state.forced[: stopping.max_tokens - child.depth]
    if stopping.context_window is not None:
        forced = forced[: stopping.context_window - prompt_length - child.depth]
    if not forced:
        return child
    state = child.state.advance_many(forced)
    return Node((token, *forced), node, (logprob,), state=state, forced=len(forced))


def _forward(model, nodes: list[Node]) -> torch.Tensor:
    """Next-token logits of `nodes`; the same forward fills in the log-probabilities of forced tokens."""
    keep = 1 + max(node.forced for node in nodes)
    if keep == 1:
        return model.logits(nodes)
    logits = model.logits_last(nodes, keep)
    for row, node in enumerate(nodes):
        if node.forced:
            k = node.forced
            targets = torch.tensor(node.new_tokens[-k:], device=logits.device).unsqueeze(-1)
            values = logits[row, -1 - k : -1].log_softmax(dim=-1).gather(-1, targets).squeeze(-1)
            node.fill_forced(values.tolist())
    return logits[:, -1]


def _fill_forced_logprobs(model, leaves: list[Node]) -> None:
    """Finished hypotheses that end in forced tokens get their log-probabilities from one last forward."""
    if not leaves:
        return
    _forward(model, leaves)
    for leaf in leaves:
        model.cache.discard(leaf)
        if leaf.parent.parent is not None:
            model.cache.discard(leaf.parent)


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
        text = self.model.decode(node.last_tokens(self.window + len(node.new_tokens)))
        return any(s in text for s in self.stop)
