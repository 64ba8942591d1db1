"""Greedy decoding and ancestral sampling, with transformers' logits warpers re-expressed on a batch.

`Greedy` takes the arg-max of the raw logits (as `generate(do_sample=False)`). `Sample` applies, in
transformers' order, temperature, top-k, top-p (nucleus; Holtzman et al., arXiv 1904.09751) and
min-p (Nguyen et al., arXiv 2407.01082), always keeping at least one token, then draws from the
renormalised distribution with its own seeded generator, so a seed reproduces a run.
Both take the logit processors of search/processors.py as keyword arguments (`typical_p`,
`epsilon_cutoff`, `eta_cutoff`, `repetition_penalty`, `no_repeat_ngram_size`, `presence_penalty`,
`frequency_penalty`, `logit_bias`); the decoding step applies their penalties to each row's logits
before the constraint mask (`penalize`), and `process` warps after it. `Greedy` with none set is
the plain arg-max path, fused across prompts.
Reported log-probabilities are those of the unprocessed model distribution.

`Sample(exact=True)` samples from the model conditioned on the constraint, p(x | x satisfies it),
rather than from the product of masked, renormalised steps: it runs sequential Monte Carlo
(search/smc.py: `SMC(particles=max(16, n), proposal="awrs", draws=n, seed=seed)`) and returns `n` draws from
the weighted particles, each hypothesis with `.weight` 1/n. It takes the model's own distribution: the
warpers and processors must stay unset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from searchdec.search.base import Search, SearchResult, SearchStats
from searchdec.search.decode import complete
from searchdec.search.processors import Processors
from searchdec.search.rows import Picker, draw
from searchdec.search.smc import SMC
from searchdec.search.tree import Node
from searchdec.search.work import Work

EXACT_PARTICLES = 16  # the fewest particles Sample(exact=True) runs


@dataclass(frozen=True)
class Greedy(Processors, Search):
    """Pick the most probable next token (of the processed logits, when a processor is set)."""

    n: int = 1
    distributable = True
    seed = None  # draws nothing: with processors its rows run as policy rows, and their seeds go unused

    def __post_init__(self) -> None:
        if self.n != 1:
            raise ValueError("Greedy returns one hypothesis; use Sample(n=...) or a beam search for more")
        self.check_processors()

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        policy = self if self.processes else None  # None: the fused arg-max path
        return [_unranked(root, leaves) for root, leaves in zip(roots, complete(work, roots, policy, 1))]

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits the arg-max is taken over: the truncation warpers' (removed tokens -inf)."""
        return self.truncate(logits) if self.truncates else logits

    def draw(self, logits: torch.Tensor, generator: torch.Generator | None = None, samples: int = 1) -> torch.Tensor:
        """The arg-max of each row, `samples` times ([batch, samples])."""
        return self.process(logits).argmax(dim=-1, keepdim=True).expand(-1, samples)

    def pick(self, scores: torch.Tensor, generators: list[torch.Generator | None]) -> list[int]:
        """One token per row of (penalized, masked) `scores`."""
        return self.process(scores).argmax(dim=-1).tolist()


@dataclass(frozen=True)
class Sample(Processors, Search):
    """Draw each next token from the processed model distribution; `n` independent samples per
    prompt, sample j of prompt i with its own generator seeded by `task_seed(seed, i, j)`."""

    distributable = True

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    n: int = 1
    seed: int | None = None
    exact: bool = False  # sample from p(x | constraint) by sequential Monte Carlo (module docstring)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (use Greedy() for arg-max), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        self.check_processors()
        if not isinstance(self.exact, bool):
            raise TypeError(f"exact must be True or False, got {self.exact!r}")
        if self.exact:
            warped = self.temperature != 1.0 or self.top_k is not None or self.top_p < 1.0 or self.min_p > 0.0
            if warped or self.processes:
                raise ValueError(
                    "exact=True samples the model's own distribution conditioned on the constraint: leave "
                    "temperature, top_k, top_p, min_p and the logit processors unset"
                )

    def smc(self) -> SMC:
        """The sequential Monte Carlo search `exact=True` runs."""
        return SMC(particles=max(EXACT_PARTICLES, self.n), proposal="awrs", seed=self.seed, draws=self.n)

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        if self.exact:
            if not work.executor.local:
                raise ValueError(
                    "Sample(exact=True) runs sequential Monte Carlo in this process (all particles in one batched "
                    "forward per step); drop executor= or use an in-process one"
                )
            return self.smc().run(work, roots)
        return [_unranked(root, leaves) for root, leaves in zip(roots, complete(work, roots, self, self.n))]

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Warped logits ([batch, vocab], float32); removed tokens are -inf."""
        if self.temperature < 1e-5:
            # The limit of temperature -> 0 is the arg-max; dividing by 1e-300 overflows to inf - inf = nan.
            best = logits.max(dim=-1, keepdim=True).values
            return logits.masked_fill(logits < best, float("-inf"))
        scores = logits / self.temperature
        if self.top_k is not None and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            remove_sorted = cumulative <= (1 - self.top_p)
            remove_sorted[..., -1] = False
            remove = remove_sorted.scatter(-1, order, remove_sorted)
            scores = scores.masked_fill(remove, float("-inf"))
        if self.min_p > 0.0:
            probs = scores.softmax(dim=-1)
            threshold = self.min_p * probs.max(dim=-1, keepdim=True).values
            remove = probs < threshold
            remove &= ~(probs == probs.max(dim=-1, keepdim=True).values)
            scores = scores.masked_fill(remove, float("-inf"))
        return self.truncate(scores) if self.truncates else scores

    def pick(self, scores: torch.Tensor, generators: list[torch.Generator | Picker]) -> list[int]:
        """One token per row of (penalized, masked) `scores`, row i drawn with `generators[i]` (a torch
        generator, or the row's own `Picker`, e.g. arithmetic sampling's code point)."""
        probs = self.process(scores).softmax(dim=-1)
        return [draw(probs[k], g) for k, g in enumerate(generators)]

    def draw(self, logits: torch.Tensor, generator: torch.Generator, samples: int = 1) -> torch.Tensor:
        """Token ids [batch, samples], drawn independently (with replacement) per row."""
        probs = self.process(logits).softmax(dim=-1)
        return torch.multinomial(probs, samples, replacement=True, generator=generator)

    def generator(self, device: torch.device) -> torch.Generator:
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def _unranked(root: Node, leaves: list[Node]) -> SearchResult:
    """Leaves in the order they were drawn; no score, no tree beyond the rows."""
    stats = SearchStats(expansions=1 + sum(leaf.depth for leaf in leaves))
    stats.tokens_forwarded = len(root.new_tokens) + sum(max(leaf.depth - 1, 0) for leaf in leaves)
    stats.generated_tokens = sum(leaf.depth for leaf in leaves)
    stats.backtracks = sum(leaf.backtracks for leaf in leaves)
    return SearchResult(leaves, [None] * len(leaves), None, stats)
