"""Lookahead decoding: Jacobi iterations guess future tokens, an n-gram pool keeps what they found, and
the target verifies the pool's candidates in the same forward; lossless, no draft model.

Reference: Fu, Bailis, Stoica & Zhang, "Break the Sequential Dependency of LLM Inference Using
Lookahead Decoding" (ICML 2024, arXiv 2402.02057). Semantics, per step (one target forward):
- the lookahead branch is a window of `window` columns by `ngram - 1` levels of guessed tokens:
  level 0 is a chain after the accepted text (column i at depth i + 1) and each column continues
  downwards (level l, column i at depth i + l + 1, after level l - 1 of the same column), which is a
  token tree, so it is forwarded with the tree attention mask of multi-draft verification;
- the verification branch is up to `candidates` n-grams from the pool whose first token is the
  text's last token, their `ngram - 1` following tokens drafted as a trie beside the window;
- the whole tree is verified as `Speculative` verifies a token tree (search/speculative.py): greedy
  follows the target's arg-max, so the output is token-identical to target greedy decoding; sampling
  draws from the target's own distribution at each node (the drafts are deterministic), so it is
  distributed exactly as target sampling;
- from the target's arg-max at the last level of each column, the pool gains the n-gram (levels 0
  .. ngram-2 of the column, that arg-max), keyed by its first token, newest first, `candidates` per
  key; the window then moves one Jacobi step: levels shift up, the arg-maxes become the last level,
  and when a tokens were appended, the first a - 1 columns fall away (new ones repeat the last).
Initial guesses are tokens of the prompt picked by a generator seeded with the prompt's length.
Under a constraint the verification n-grams are cut where the grammar refuses them; the window's
guesses are not (a refused guess can never equal the masked arg-max, so it is never accepted).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from searchdec.search.base import Search, SearchResult
from searchdec.search.drafts import ROOT, Drafter, DraftTree, add_continuations
from searchdec.search.sampling import Sample
from searchdec.search.speculative import Speculative
from searchdec.search.tree import Node
from searchdec.search.work import Work


@dataclass(frozen=True)
class LookaheadDraft:
    """The lookahead branch and n-gram pool as a draft source for `Speculative`."""

    window: int = 5
    ngram: int = 4
    candidates: int = 5

    def __post_init__(self) -> None:
        for name, low in (("window", 1), ("ngram", 2), ("candidates", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    def start(self, target, spec) -> Drafter:
        return _LookaheadDrafter(self)


class _LookaheadDrafter(Drafter):
    def __init__(self, source: LookaheadDraft) -> None:
        self.source = source
        self.levels: list[list[int]] = []  # ngram - 1 levels of `window` guesses
        self.pool: dict[int, list[tuple[int, ...]]] = {}
        self.where: dict[tuple[int, int], int] = {}  # (level, column) -> node of the last tree
        self.length = 0  # context length at the last proposal

    def propose(self, context, k, limit, width, state, sample, generator) -> DraftTree:
        window, levels = self.source.window, self.source.ngram - 1
        if not self.levels:
            pick = random.Random(len(context))
            self.levels = [[context[pick.randrange(len(context))] for _ in range(window)] for _ in range(levels)]
        elif len(context) > self.length + 1:  # a tokens appended: the first a - 1 columns fall away
            drop = min(len(context) - self.length - 1, window - 1)
            self.levels = [row[drop:] + [row[-1]] * drop for row in self.levels]
        self.length = len(context)
        tree = DraftTree()
        candidates = [list(gram[:limit]) for gram in self.pool.get(context[-1], [])]
        add_continuations(tree, candidates, state, self.source.candidates)
        self.where = {}
        for level in range(levels):
            for column in range(window):
                if column + level + 1 > limit:
                    break
                above = (level, column - 1) if level == 0 else (level - 1, column)
                parent = ROOT if level == 0 and column == 0 else self.where.get(above)
                if parent is None:
                    break
                self.where[(level, column)] = tree.add(parent, self.levels[level][column])
        return tree

    def observe(self, tree: DraftTree, logits: torch.Tensor) -> None:
        if not self.where:
            return
        last = self.source.ngram - 2
        guesses = {place: int(logits[1 + node].argmax()) for place, node in self.where.items() if place[0] == last}
        for column, guess in sorted((column, guess) for (_, column), guess in guesses.items()):
            gram = (*(self.levels[level][column] for level in range(1, last + 1)), guess)
            grams = self.pool.setdefault(self.levels[0][column], [])
            if gram in grams:
                grams.remove(gram)
            grams.insert(0, gram)
            del grams[self.source.candidates :]
        newest = [guesses.get((last, column), self.levels[last][column]) for column in range(self.source.window)]
        self.levels = [*self.levels[1:], newest]


@dataclass(frozen=True)
class Lookahead(Search):
    """`sd.Lookahead(window=5, ngram=4, candidates=5, sample=None)`: lookahead decoding, lossless.
    One target forward per step over window * (ngram - 1) guesses and up to candidates * (ngram - 1)
    pool tokens; `Generation.stats` is a `SpeculativeStats`."""

    window: int = 5
    ngram: int = 4
    candidates: int = 5
    sample: Sample | None = None
    n: int = 1

    def __post_init__(self) -> None:
        source = LookaheadDraft(self.window, self.ngram, self.candidates)
        verifier = Speculative(
            draft=source, k=self.ngram - 1, drafts=self.candidates, sample=self.sample, max_k=self.ngram - 1
        )
        if self.n != 1:
            raise ValueError(f"Lookahead decodes one hypothesis per prompt (n must be 1), got {self.n}")
        object.__setattr__(self, "verifier", verifier)

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        return self.verifier.run(work, roots)
