"""Arithmetic sampling (Vilnis et al., "Arithmetic Sampling: Parallel Diverse Decoding for Large
Language Models", ICML 2023, arXiv 2210.15458): `n` samples per prompt from `n` evenly spaced code
points in [0, 1), each decoded by arithmetic decoding.

Code point j of prompt i is u_j = frac(s + j / n), with one random shift s ~ U[0, 1) per prompt
(from `task_seed(sample.seed, i)`), so each u_j is uniform on [0, 1) and the n codes are spread
evenly. A code is decoded independently of the others: at each step the row's processed
distribution (the same `Sample.process` ordinary sampling uses: temperature, top-k, top-p, min-p,
after the constraint's mask) is laid out as a CDF in vocabulary order, the token whose interval
holds the code is chosen, and the code is rescaled into that interval (the interval of the whole
path narrows, as in an arithmetic coder). Because u_j is uniform, every sample is distributed
exactly as an ordinary ancestral sample from that distribution; the even spacing is what makes
the n samples more diverse than independent ones (the paper's result).

Exactness: the codes are exact rationals (`fractions.Fraction`), and the shift is an infinite random
bit string read 32 bits at a time, only when a code's known bits do not yet decide the token (its
interval straddles a CDF boundary). Plain floats would run out of precision after ~53 bits of
entropy (a few dozen tokens) and then decode the same tokens for every code.

The n rows of every prompt decode together in this process, one batch per step, through the one
decoding step (search/rows.py): the draw is the rows' `Picker` hook. Under a constraint, budget
steering's re-draw decodes the same code again from the edited distribution. Results come in
code order, unranked (scores None), as `Sample`'s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int
from searchdec.search.rows import Decoder, Row, Rule, decode_rows, start_budget
from searchdec.search.sampling import Sample
from searchdec.search.tree import Node
from searchdec.search.work import Work

WORD_BITS = 32


class Shift:
    """A uniform random number in [0, 1) as a lazily drawn, seeded string of bits (shared by the
    codes of one prompt: each reads as far as it needs)."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)
        self._words: list[int] = []

    def bounds(self, words: int) -> tuple[Fraction, Fraction]:
        """The shift's interval [low, low + width) known from its first `words` 32-bit words."""
        while len(self._words) < words:
            self._words.append(self._random.getrandbits(WORD_BITS))
        value = 0
        for word in self._words[:words]:
            value = (value << WORD_BITS) | word
        width = Fraction(1, 1 << (WORD_BITS * words))
        return value * width, width


class CodePoint:
    """One row's code u = frac(shift + offset), decoded token by token (a `rows.Picker`)."""

    def __init__(self, shift: Shift, offset: Fraction) -> None:
        self.shift = shift
        self.offset = offset
        self.words = 1
        self.low, self.width = Fraction(0), Fraction(1)  # the chosen path's interval; it holds u
        self._before = (self.low, self.width)

    def code(self) -> tuple[Fraction, Fraction]:
        """u's interval [low, low + width) known so far; more bits are read while it wraps past 1."""
        while True:
            low, width = self.shift.bounds(self.words)
            low = (low + self.offset) % 1
            if low + width <= 1:
                return low, width
            self.words += 1

    def pick(self, probs: torch.Tensor, retry: bool = False) -> int:
        """The token whose CDF interval holds the code; the path's interval narrows to it."""
        if retry:
            self.low, self.width = self._before
        self._before = (self.low, self.width)
        cdf = probs.detach().to("cpu", torch.float64).cumsum(0)
        total = Fraction(float(cdf[-1]))
        while True:
            low, width = self.code()
            start = (low - self.low) / self.width * total  # the code's place, in CDF units
            end = (low + width - self.low) / self.width * total
            token = _interval_of(cdf, start)
            upper = Fraction(float(cdf[token]))
            if end <= upper:
                lower = Fraction(float(cdf[token - 1])) if token else Fraction(0)
                self.low += self.width * lower / total
                self.width *= (upper - lower) / total
                return token
            self.words += 1  # the known bits straddle a boundary: read more of the shift


def _interval_of(cdf: torch.Tensor, x: Fraction) -> int:
    """The k with cdf[k-1] <= x < cdf[k] (exactly, cdf[-1] counting as 0): a token of positive probability."""
    k = int(torch.searchsorted(cdf, float(x), right=True))
    last = cdf.numel() - 1
    k = min(k, last)
    while k > 0 and Fraction(float(cdf[k - 1])) > x:
        k -= 1
    while k < last and Fraction(float(cdf[k])) <= x:
        k += 1
    return k


@dataclass(frozen=True)
class ArithmeticSampling(Search):
    """`n` samples per prompt from evenly spaced code points (see the module docstring)."""

    n: int = 8
    sample: Sample = field(default_factory=Sample)

    def __post_init__(self) -> None:
        check_positive_int("n", self.n)
        if not isinstance(self.sample, Sample):
            raise TypeError(f"sample must be sd.Sample(...) (its warpers and seed), got {type(self.sample).__name__}")

    def codes(self, base: int, prompt: int) -> list[CodePoint]:
        """The `n` code points of one prompt: one shift, offsets j / n."""
        shift = Shift(Work.seed(base, "arithmetic", prompt))
        return [CodePoint(shift, Fraction(j, self.n)) for j in range(self.n)]

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        base = work.base_seed(self.sample)
        rule = Rule(work.stopping, work.jump_forward)
        stats = [SearchStats() for _ in roots]
        rows = []
        for i, root in enumerate(roots):
            start_budget(root, work.stopping)
            size = len(root.new_tokens)
            rows += [Row(root, root, size, rule, self.sample, code, stats[i], owner=i) for code in self.codes(base, i)]
        on_token = None
        if work.on_token is not None:

            def on_token(row: Row) -> None:
                work.on_token(row.owner, row.node)

        decoder = Decoder(work.model)
        try:
            leaves = decode_rows(decoder, rows, on_token=on_token)
        finally:
            decoder.release_all()
        results = []
        for i in range(len(roots)):
            mine = leaves[i * self.n : (i + 1) * self.n]
            stats[i].generated_tokens = sum(leaf.depth for leaf in mine)
            results.append(SearchResult(mine, [None] * len(mine), None, stats[i]))
        return results
