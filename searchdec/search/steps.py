"""Step-level generation shared by the reward-driven searches (StepBeam, DVTS, MCTS, A*): extend many
nodes at once, each by one *step* — a single token (`step="token"`), or tokens up to and including
the first match of a delimiter (a string such as "\\n\\n", or a compiled regex) — or by a rollout to
the end. All extensions in flight are rows of one forward per token, through the prefix cache.

A step is a chain of one-token nodes; the search keeps its last node (the step node), whose cache
entry stays so that expanding it later forwards nothing before its children's tokens. The cache
entries of a step's inner tokens are dropped as soon as the next token is forwarded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from searchdec.search.expand import Expander, SearchStats
from searchdec.search.sampling import Greedy, Sample
from searchdec.search.tree import Node


@dataclass
class Extension:
    """One node to extend: its prompt's root, where the step starts, and whom to charge."""

    root: Node
    start: Node
    stats: SearchStats


def step_pattern(step) -> re.Pattern | None:
    """None for token steps, else the compiled delimiter."""
    if step == "token":
        return None
    if isinstance(step, re.Pattern):
        return step
    if isinstance(step, str) and step:
        return re.compile(re.escape(step))
    raise ValueError(f'step must be "token", a non-empty delimiter string or a compiled regex, got {step!r}')


def extend(
    expander: Expander,
    jobs: list[Extension],
    policy: Greedy | Sample,
    generator: torch.Generator | None,
    pattern: re.Pattern | None,
    to_end: bool = False,
    max_step_tokens: int | None = None,
) -> list[Node]:
    """The node each job ends at: after one step (or, with `to_end`, when it finishes). A finished
    node has its `finish_reason` set. Entries of inner tokens are dropped; `expander.release()` drops
    the rest when the search ends."""
    model = expander.model
    done: list[Node | None] = [None] * len(jobs)
    active = [(i, job.start) for i, job in enumerate(jobs)]
    inner: set[int] = set()  # tokens this call appended that a later token of the same step follows
    while active:
        # Jobs starting from one node share its forward (a search often extends a node k times).
        unique: dict[int, int] = {}
        nodes, charged = [], []
        for i, node in active:
            if id(node) not in unique:
                unique[id(node)] = len(nodes)
                nodes.append(node)
                charged.append(jobs[i].stats)
        logprobs = expander.logprobs(nodes, charged)
        logprobs = logprobs[torch.tensor([unique[id(node)] for _, node in active], device=logprobs.device)]
        for node in nodes:  # an inner token of a step is never expanded again
            if node.parent is not None and id(node.parent) in inner:
                model.cache.discard(node.parent)
        if isinstance(policy, Greedy):
            tokens = logprobs.argmax(dim=-1, keepdim=True)
        else:
            tokens = policy.draw(logprobs, generator, 1)
        chosen = logprobs.gather(-1, tokens).squeeze(-1).tolist()
        still = []
        for row, (i, node) in enumerate(active):
            child = node.child((int(tokens[row, 0]),), (chosen[row],))
            reason = expander.finish_reason(child, jobs[i].root)
            length = child.depth - jobs[i].start.depth
            if reason is not None:
                child.finish_reason = reason
                done[i] = child
            elif not to_end and (
                pattern is None
                or pattern.search(model.decode(_since(child, jobs[i].start)))
                or (max_step_tokens is not None and length >= max_step_tokens)
            ):
                done[i] = child
            else:
                inner.add(id(child))
                still.append((i, child))
        active = still
    return done  # type: ignore[return-value]


def step_texts(model, node: Node, boundaries: set[int]) -> list[str]:
    """The text of each step from the root to `node`; `boundaries` holds ids of step-end nodes."""
    steps: list[list[int]] = [[]]
    for n in node.path():
        steps[-1].extend(t for t in n.new_tokens if t not in model.eos_token_ids)
        if id(n) in boundaries and n is not node:
            steps.append([])
    return [model.decode(s) for s in steps]


def _since(node: Node, start: Node) -> list[int]:
    tokens: list[int] = []
    current = node
    while current is not None and current is not start:
        tokens[:0] = current.new_tokens
        current = current.parent
    return tokens
