"""Budget-aware completion: a constrained hypothesis is steered to close its structure within the
tokens left, so that `max_tokens` does not cut a JSON object in half.

At each step the chosen token is checked: if the grammar can no longer be completed from the child in
the tokens left (by `State.closing`, a greedy closing walk, an upper bound on the tokens needed), that
token is masked and the choice is made again from the same row (the next-best token for greedy, a
fresh draw from the renormalised distribution for sampling), up to `RETRIES` times; then the closing
walk's own first token is taken, which keeps the output closable by construction. When even the
prompt's start state cannot be closed within `max_tokens`, nothing is steered and the hypothesis ends
with "length", as it would without a budget. A child whose parent can no longer close at all (no walk
within the tokens left: a check refuses every closing the grammar offers) is marked `stranded`; the
decoding step backtracks from it where its State may die (search/rows.py), and otherwise it runs on to
"length".

The walk costs ~50 µs a token, so it runs only where the budget is tight: on every step once the
tokens left are within `2 * cost + SLACK` of the last measured cost, and otherwise every `PERIOD`
tokens, which keeps the estimate fresh when a token opens structure that is costly to close. A State
whose `steer_every_token` is true is checked on every token (a lexical constraint over a grammar: one
token can close the grammar with a required phrase still unwritten, whatever the tokens left).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from searchdec.search.tree import Node

RETRIES = 8
SLACK = 16
PERIOD = 8


def tokens_left(node: Node, max_tokens: int, room: int | None) -> int:
    """Generated tokens `node` may still add: `max_tokens` counts from the root, `room` is what the
    context window leaves after the prompt (None: no window)."""
    left = max_tokens - node.depth
    return left if room is None else min(left, room - node.depth)


def start(root: Node, max_tokens: int, room: int | None) -> None:
    """Measure what closing the root's grammar costs (a root that cannot close within the budget is left unsteered)."""
    found = root.state.closing(tokens_left(root, max_tokens, room))
    root.closing = found[0] if found is not None else -1


def keep_closable(
    node: Node,
    child: Node,
    row: torch.Tensor,
    extend: Callable[[int], Node],
    choose: Callable[[torch.Tensor], int],
    max_tokens: int,
    room: int | None,
    eos_token_ids: frozenset[int],
) -> Node:
    """`child` (the chosen expansion of `node`), or a replacement that can still close in the tokens left.

    `row` holds the masked logits `child`'s token was chosen from; `extend(token)` builds the child
    for another token and `choose(row)` picks again from an edited row."""
    if closable(node, child, max_tokens, room, eos_token_ids):
        return child
    left = tokens_left(child, max_tokens, room)
    for attempt in range(RETRIES + 1):
        if attempt and _closes(child, left, eos_token_ids):
            return child
        if attempt == 0:
            row = row.clone()  # the caller's row stays as chosen from; only a retry edits a copy
        row[child.new_tokens[0]] = float("-inf")
        if attempt == RETRIES or not torch.isfinite(row).any():
            break
        child = extend(choose(row))
        child.closing = node.closing
        left = tokens_left(child, max_tokens, room)
    found = closing_walk(node, max_tokens, room)
    if found is None:
        child.stranded = True  # cannot close any more: backtracked from, or it ends with "length"
        return child
    child = extend(found[1])
    child.closing = found[0] - 1
    return child


def closable(node: Node, child: Node, max_tokens: int, room: int | None, eos_token_ids: frozenset[int]) -> bool:
    """Whether `child` (a new child of `node`) can still close in the tokens left, as far as the
    budget checks (where it is tight, and every `PERIOD` tokens; else it is assumed). Sets
    `child.closing`. The beam family drops a candidate that cannot; `keep_closable` draws again."""
    child.closing = node.closing
    if node.closing < 0 or child.state is None:
        return True
    left = tokens_left(child, max_tokens, room)
    tight = left <= 2 * node.closing + SLACK or child.state.steer_every_token
    if not tight and child.depth % PERIOD:
        return True
    return _closes(child, left, eos_token_ids)


def closing_walk(node: Node, max_tokens: int, room: int | None) -> tuple[int, int | None] | None:
    """`node.state.closing` within the tokens left: (tokens needed, the first of them), or None."""
    return node.state.closing(tokens_left(node, max_tokens, room))


def _closes(child: Node, left: int, eos_token_ids: frozenset[int]) -> bool:
    if child.new_tokens[0] in eos_token_ids or child.state.finished:
        return True
    found = child.state.closing(left)
    if found is None:
        return False
    child.closing = found[0]
    return True
