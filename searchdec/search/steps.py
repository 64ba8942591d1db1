"""Step-level generation shared by the reward-driven searches (StepBeam, DVTS, MCTS, A*): extend many
nodes at once, each by one *step* — a single token (`step="token"`), or tokens up to and including
the first match of a delimiter (a string such as "\\n\\n", or a compiled regex) — or by a rollout to
the end. All extensions in flight are rows of one forward per token, through the prefix cache.

A step is a chain of one-token nodes; the search keeps its last node (the step node), whose cache
entry stays so that expanding it later forwards nothing before its children's tokens. The cache
entries of a step's inner tokens are dropped as soon as the next token is forwarded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from searchdec.search.base import SearchStats
from searchdec.search.expand import Expander
from searchdec.search.rows import Row, Rule, decode_rows
from searchdec.search.tree import Node

if TYPE_CHECKING:
    from searchdec.search.sampling import Sample


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
    policy: Sample | None,
    generator: torch.Generator | None,
    pattern: re.Pattern | None,
    to_end: bool = False,
    max_step_tokens: int | None = None,
) -> list[Node]:
    """The node each job ends at, after one step (or, with `to_end`, when it finishes), decoded by the
    one decoding step in this process (policy None: greedy). A finished node has its `finish_reason`
    set. The entry under each end is kept for the search to expand it later; `expander.release()`
    drops every entry when the search ends."""
    rule = Rule(expander.stopping, expander.jump_forward, to_end, pattern, max_step_tokens)
    rows = [Row(job.start, job.start, len(job.root.new_tokens), rule, policy, generator, job.stats) for job in jobs]
    return decode_rows(expander.decoder, rows, keep_ends=True)


def aggregate_steps(scores: list[float], how: str) -> float:
    """search-and-learn's aggregation of step scores: the last, the minimum, or the product (a step
    a reward left unscored, NaN, is skipped)."""
    scores = [s for s in scores if not math.isnan(s)]
    if not scores:
        return 0.0
    if how == "last":
        return scores[-1]
    if how == "min":
        return min(scores)
    if how == "prod":
        return math.prod(scores)
    raise ValueError(f'aggregate must be "last", "min" or "prod", got {how!r}')


def step_texts(model, node: Node, boundaries: set[int]) -> list[str]:
    """The text of each step from the root to `node`; `boundaries` holds ids of step-end nodes."""
    steps: list[list[int]] = [[]]
    for n in node.path():
        steps[-1].extend(t for t in n.new_tokens if t not in model.eos_token_ids)
        if id(n) in boundaries and n is not node:
            steps.append([])
    return [model.decode(s) for s in steps]
