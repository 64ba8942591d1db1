"""Minimum Bayes risk (MBR) decoding: draw `n` candidates, return them ranked by their expected
utility against the others (Kumar and Byrne, "Minimum Bayes-Risk Decoding for Statistical Machine
Translation", 2004; sampling-based MBR: Eikema and Aziz, "Is MAP Decoding All You Need?", arXiv
2005.10283; Bertsch et al., "It's MBR All the Way Down: Modern Generation Techniques Through the Lens
of Minimum Bayes Risk", arXiv 2310.01387; Suzgun et al., "Follow the Wisdom of the Crowd", arXiv
2211.07634).

Candidates come from any search that returns `n` hypotheses — by default `Sample(n=n, seed=0)`
(ancestral sampling at temperature 1, seeded: the same call gives the same result); a `Beam`,
`PrioritySampling` or `ArithmeticSampling` works as well. The candidates are also the evidence:
candidate i's expected utility is `sum_{j != i} w_j * u(c_i, c_j) / sum_{j != i} w_j`.
Weights: "uniform" (the default) or "model". Uniform is right for sampled candidates: they are
already draws from the model, so their empirical distribution is the Monte Carlo estimate of the
model's (Eikema and Aziz; Bertsch et al. §3), and weighting by the probability again would count it
twice — self-consistency (majority vote) is this rule with the exact-match utility. "model" weighs
each distinct output by its sequence probability (duplicates share it), which is what a
deterministic candidate set (beam, priority sampling) needs, as it is not a sample.

Utilities, `u(candidate, evidence) -> float`:
- "exact": 1.0 when the two outputs' extracted answers are equal and not None, else 0.0; the answer
  is the last number in the text (commas dropped, "3.50" == "3.5") unless `answer=` gives a regex
  (its last match; its first group when it has one) or a callable text -> answer;
- "chrf": chrF with beta 2 over character n-grams of orders 1 to 6, whitespace removed (Popović,
  "chrF: character n-gram F-score for automatic MT evaluation", WMT 2015): precision and recall
  averaged over the orders both texts have, then F_beta; asymmetric (recall weighs more);
- "f1": token-level F1 (SQuAD's: lower-cased word tokens, bag overlap);
- any callable `(candidate: str, evidence: str) -> float` (treated as asymmetric).
Each text's features (answer, n-gram counts, tokens) are computed once; the pairwise matrix is
computed once per prompt, each unordered pair once for a symmetric utility ("exact", "f1").

Ranking: finished ("stop") before cut ("length"), then expected utility, then the candidate's
log-probability, then the earlier candidate. A hypothesis's score is its expected utility.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int, text_of
from searchdec.search.sampling import Sample
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Work

WEIGHTS = ("uniform", "model")
CHRF_ORDER = 6
CHRF_BETA = 2.0
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


@dataclass
class MBRStats(SearchStats):
    """The candidates' cost plus the utility evaluations (`utility_pairs`)."""

    utility_pairs: int = 0


# --- utilities: features computed once per text, then a pairwise score ------------------------------


def last_number(text: str) -> str | None:
    """The last number in `text`, normalised (commas dropped, trailing zeros of a fraction removed:
    "1,000.50" -> "1000.5"), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    raw = found[-1].replace(",", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return raw
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def regex_answer(pattern: str | re.Pattern) -> Callable[[str], str | None]:
    """An extractor returning the last match of `pattern` (its first group when it has one)."""
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern

    def extract(text: str) -> str | None:
        matches = list(compiled.finditer(text))
        if not matches:
            return None
        last = matches[-1]
        return last.group(1) if compiled.groups else last.group(0)

    return extract


def char_ngrams(text: str, order: int = CHRF_ORDER) -> list[Counter]:
    """Character n-gram counts of orders 1..`order` of `text` with its whitespace removed."""
    text = _SPACE.sub("", text)
    return [Counter(text[i : i + n] for i in range(len(text) - n + 1)) for n in range(1, order + 1)]


def chrf_of(hypothesis: list[Counter], reference: list[Counter], beta: float = CHRF_BETA) -> float:
    """chrF_beta of two texts' `char_ngrams`: precision and recall averaged over the orders both
    texts have n-grams of (Popović 2015), then (1 + b²) P R / (b² P + R); 0.0 when nothing matches."""
    precision = recall = 0.0
    orders = 0
    for hyp, ref in zip(hypothesis, reference):
        hyp_total, ref_total = sum(hyp.values()), sum(ref.values())
        if hyp_total and ref_total:
            common = sum((hyp & ref).values())
            precision += common / hyp_total
            recall += common / ref_total
            orders += 1
    if not orders:
        return 0.0
    precision, recall = precision / orders, recall / orders
    if precision + recall == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


def chrf(hypothesis: str, reference: str, beta: float = CHRF_BETA) -> float:
    """chrF (orders 1..6, beta 2, whitespace removed) of `hypothesis` against `reference`, in [0, 1]."""
    return chrf_of(char_ngrams(hypothesis), char_ngrams(reference), beta)


def words(text: str) -> Counter:
    return Counter(_WORD.findall(text.lower()))


def f1_of(a: Counter, b: Counter) -> float:
    """Token-level F1 of two bags of words: 1.0 when both are empty, 0.0 when one is."""
    if not a or not b:
        return float(not a and not b)
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)


def token_f1(a: str, b: str) -> float:
    """Token-level F1 of two texts (lower-cased word tokens)."""
    return f1_of(words(a), words(b))


def _same_answer(a, b) -> float:
    return float(a is not None and a == b)


@dataclass(frozen=True)
class Utility:
    """A pairwise utility: `features(text)` once per text, `score(features_a, features_b)` per pair."""

    name: str
    features: Callable[[str], object]
    score: Callable[[object, object], float]
    symmetric: bool

    def matrix(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """u[i][j] = utility of candidate i against evidence j (diagonal left 0.0), and how many
        pairs were scored."""
        feats = [self.features(t) for t in texts]
        n = len(texts)
        u = [[0.0] * n for _ in range(n)]
        pairs = 0
        for i in range(n):
            for j in range(i + 1 if self.symmetric else 0, n):
                if i == j:
                    continue
                u[i][j] = _checked(self.name, self.score(feats[i], feats[j]))
                pairs += 1
                if self.symmetric:
                    u[j][i] = u[i][j]
        return u, pairs


def _checked(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"utility {name!r} must return a number, got {type(value).__name__}") from None
    if math.isnan(value):
        raise ValueError(f"utility {name!r} returned NaN")
    return value


UTILITIES = ("exact", "chrf", "f1")


def make_utility(utility: str | Callable[[str, str], float], answer) -> Utility:
    """The `Utility` named by `utility` ("exact", "chrf", "f1") or wrapping a callable."""
    if callable(utility):
        return Utility(getattr(utility, "__name__", "callable"), lambda text: text, utility, symmetric=False)
    if utility == "exact":
        extract = last_number if answer is None else answer if callable(answer) else regex_answer(answer)
        return Utility("exact", extract, _same_answer, symmetric=True)
    if utility == "chrf":
        return Utility("chrf", char_ngrams, chrf_of, symmetric=False)
    if utility == "f1":
        return Utility("f1", words, f1_of, symmetric=True)
    names = ", ".join(map(repr, UTILITIES))
    raise ValueError(f"utility must be one of {names} or a callable (a, b) -> float, got {utility!r}")


def expected_utilities(u: list[list[float]], weights: Sequence[float]) -> list[float]:
    """Each candidate's weighted mean utility against the others (0.0 when there is no other)."""
    out = []
    for i, row in enumerate(u):
        total = sum(w for j, w in enumerate(weights) if j != i)
        value = sum(w * row[j] for j, w in enumerate(weights) if j != i)
        out.append(value / total if total > 0 else 0.0)
    return out


def model_weights(leaves: Sequence[Node]) -> list[float]:
    """Each candidate's sequence probability, shared among its duplicates, scaled by the largest
    (so that long outputs do not underflow to zero weight)."""
    keys = [tuple(leaf.generated()[0]) for leaf in leaves]
    copies = Counter(keys)
    best = max(leaf.logprob for leaf in leaves)
    return [math.exp(leaf.logprob - best) / copies[key] for leaf, key in zip(leaves, keys)]


# --- the search --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MBR(Search):
    """Rank `n` candidates by expected utility against the others (see the module docstring)."""

    n: int = 8
    utility: str | Callable[[str, str], float] = "exact"
    candidates: Search | None = None
    weights: str = "uniform"
    answer: str | re.Pattern | Callable[[str], object] | None = None
    _utility: Utility = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_positive_int("n", self.n, minimum=2)  # a candidate's utility is measured against the others
        if self.weights not in WEIGHTS:
            raise ValueError(f'weights must be "uniform" or "model", got {self.weights!r}')
        if self.answer is not None:
            if self.utility != "exact":
                raise ValueError('answer= extracts what the "exact" utility compares; it needs utility="exact"')
            if isinstance(self.answer, str):
                try:
                    re.compile(self.answer)
                except re.error as error:
                    raise ValueError(f"answer is not a valid regex: {error}") from None
            elif not (isinstance(self.answer, re.Pattern) or callable(self.answer)):
                raise TypeError(
                    f"answer must be a regex or a callable text -> answer, got {type(self.answer).__name__}"
                )
        object.__setattr__(self, "_utility", make_utility(self.utility, self.answer))
        if self.candidates is None:
            object.__setattr__(self, "candidates", Sample(n=self.n, seed=0))
        elif not isinstance(self.candidates, Search):
            raise TypeError(f"candidates must be a search (sd.Sample(n=...), sd.Beam(...)), got {self.candidates!r}")
        if self.candidates.n != self.n:
            raise ValueError(
                f"candidates returns {self.candidates.n} hypotheses but MBR has n={self.n}; make them equal"
            )

    @property
    def distributable(self) -> bool:  # as its candidates: the utilities run in this process
        return self.candidates.distributable

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        results = self.candidates.run(work, roots)
        return [self._rank(work.model, root, result) for root, result in zip(roots, results)]

    def _rank(self, model, root: Node, found: SearchResult) -> SearchResult:
        leaves = list(found.leaves)
        texts = [text_of(model, leaf) for leaf in leaves]
        u, pairs = self._utility.matrix(texts)
        weights = [1.0] * len(leaves) if self.weights == "uniform" else model_weights(leaves)
        expected = expected_utilities(u, weights)
        order = sorted(
            range(len(leaves)),
            key=lambda i: (leaves[i].finish_reason != "stop", -expected[i], -leaves[i].logprob, i),
        )
        stats = MBRStats()
        if found.stats is not None:  # the candidates' cost (a search's own extra counters are left out)
            for name in SearchStats.__dataclass_fields__:
                setattr(stats, name, getattr(found.stats, name))
        stats.utility_pairs = pairs
        utility = self._utility.name
        trace = Trace("MBR", {"n": self.n, "utility": utility, "weights": self.weights}, model.decode)
        trace.add(root, status="root")
        for i, leaf in enumerate(leaves):
            extra = {"answer": str(self._utility.features(texts[i]))[:80]} if utility == "exact" else {}
            trace.add(leaf, score=expected[i], status="finished", **extra)
        return SearchResult.ranked([(expected[i], leaves[i]) for i in order], trace, stats)
