"""`Greedy` and `Sample` as searches: every hypothesis of every prompt is decoded by the one decoding
step (search/rows.py) to its end.

Sample j of prompt i draws from its own generator seeded with `task_seed(seed, i, j)`, as a task on
any executor would (search/work.py): a seed gives the same samples with no executor, in process or
on Ray. Greedy with no executor (or an in-process one) decodes every prompt's row in one batch per
step; on a remote executor each prompt is a task. `first` (first-finish search) stops a prompt's rows
once that many have finished with "stop"; the others are cut and finish with "length".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from searchdec.search.rows import Decoder, Row, Rule, decode_rows, start_budget
from searchdec.search.tree import Node
from searchdec.search.work import Job, Work

if TYPE_CHECKING:
    from searchdec.search.sampling import Sample


def complete(
    work: Work, roots: list[Node], policy: Sample | None, n: int, first: int | None = None
) -> list[list[Node]]:
    """`n` finished hypotheses of each root (leaves with `finish_reason` set), in row order; policy
    None decodes greedily."""
    if policy is None and work.executor.local and first is None:
        return [[leaf] for leaf in _fused_greedy(work, roots)]
    if policy is None:
        jobs = [Job(root, root, [None] * n, first=first) for root in roots]
        return [result.rows for result in work.run(jobs)]
    base = work.base_seed(policy)
    jobs = [Job(root, root, [work.seed(base, i, j) for j in range(n)], first=first) for i, root in enumerate(roots)]
    return [result.rows for result in work.run(jobs, policy)]


def _fused_greedy(work: Work, roots: list[Node]) -> list[Node]:
    """Every prompt's greedy row in one batch per step: no draws, so batching changes nothing."""
    model = work.model
    rule = Rule(work.stopping, work.jump_forward)
    for root in roots:
        start_budget(root, work.stopping)
    rows = [Row(root, root, len(root.new_tokens), rule, None, owner=i) for i, root in enumerate(roots)]
    on_token = None
    if work.on_token is not None:

        def on_token(row: Row) -> None:
            work.on_token(row.owner, row.node)

    try:
        return decode_rows(Decoder(model), rows, on_token=on_token)
    finally:
        for root in roots:
            model.cache.discard(root)
