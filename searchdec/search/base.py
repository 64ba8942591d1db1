"""The search contract: every algorithm is a frozen spec with one `run(work, roots)` that returns one
`SearchResult` per prompt — finished leaves ranked best first, their scores, the trace of the tree it
grew and what it cost (`SearchStats`). `generate` calls `run` and nothing else, whatever the search.

A search reaches the model only through `work` (search/work.py): `work.run(jobs)` for rows grown
as tasks (seeded: the same result on every executor), `work.score(...)` / `work.score_steps(...)`
for rewards, and, for searches that expand a frontier token by token in this process (the beam
family, A*), `Expander(work)` over `work.model`. A search that runs all its model work as tasks sets
`distributable = True` and then runs unchanged on `sd.RayExecutor`.

Adding a search: one module with a frozen dataclass subclassing `Search` (validate in
`__post_init__`, implement `run`), plus its import in `searchdec/search/__init__.py` — the public
`sd.` namespace takes every name that module exports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar

from searchdec.rewards.base import Reward, as_reward
from searchdec.search.tree import Node

if TYPE_CHECKING:
    from searchdec.search.work import Work


@dataclass
class SearchStats:
    """What a search cost. `expansions` counts nodes whose next-token distribution was computed;
    `tokens_forwarded` counts tokens fed through the network for this prompt (the prefix cache
    makes an expansion of a child cost its own new tokens only); `reward_calls` counts reward
    evaluations; `backtracks`, the choices made again after a check beyond the grammar killed a
    hypothesis (grammars/checks.py)."""

    expansions: int = 0
    tokens_forwarded: int = 0
    reward_calls: int = 0
    generated_tokens: int = 0  # tokens in the returned hypotheses
    backtracks: int = 0  # choices spent backtracking from hypotheses a check killed (search/rows.py)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    """One prompt's outcome: finished leaves ranked best first with their ranking scores."""

    leaves: list[Node]
    scores: list[float]
    trace: object = None
    stats: SearchStats = field(default_factory=SearchStats)
    weights: list[float] | None = None  # a weighted search's normalised importance weights, one per leaf

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


class Search:
    """A search spec. Subclasses are frozen dataclasses; `n` is how many hypotheses `run` returns per prompt."""

    distributable: ClassVar[bool] = False  # all model work goes through work.run (any executor)

    @property
    def n(self) -> int:
        return 1

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        """One result per root (prompt), in order."""
        raise NotImplementedError(f"{type(self).__name__} must implement run(work, roots)")

    def _wrap_reward(self, wrap: Callable[[object], Reward] = as_reward) -> None:
        """In `__post_init__`: a given `reward` becomes a `rewards.Reward` (a plain callable is wrapped)."""
        if getattr(self, "reward", None) is not None:
            object.__setattr__(self, "reward", wrap(self.reward))

    def _require_reward(self, takes: str = "f(prompt_text, output_text) -> float") -> Reward:
        """The reward, or an error naming what this search needs, before any generation starts."""
        if getattr(self, "reward", None) is None:
            raise ValueError(f"{type(self).__name__} needs reward= (a rewards.Reward or a callable {takes})")
        return self.reward


def check_positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def text_of(model, node: Node) -> str:
    """The generated text from the root to `node` (end-of-sequence tokens left out)."""
    tokens, _ = node.generated()
    return model.decode([t for t in tokens if t not in model.eos_token_ids])
