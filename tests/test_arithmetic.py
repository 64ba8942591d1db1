"""Arithmetic sampling (search/arithmetic.py): each sample is distributed as an ordinary sample of the
same processed distribution (chi-square against the exact probabilities and against `Sample`), the
n codes are spread evenly (each token gets its share of them, rounded), the codes keep full
precision over long outputs, budget steering re-draws the same code, and constraints hold."""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

import pytest
import torch
from scipy import stats

import searchdec as sd
from searchdec.search.arithmetic import CodePoint, Shift

PROMPT = "hello"


def _first_token_probs(model, sample: sd.Sample) -> torch.Tensor:
    node = sd.Node(tuple(model.encode(PROMPT)))
    logits = model.logits([node])
    model.cache.discard(node)
    return sample.process(logits).softmax(dim=-1)[0].double()


def _pooled(observed: Counter, expected: dict, minimum: float) -> tuple[list[float], list[float]]:
    """Observed and expected counts per category, the categories expected below `minimum` pooled."""
    obs, exp, rest_obs, rest_exp = [], [], 0.0, 0.0
    for key, e in expected.items():
        if e >= minimum:
            obs.append(observed.get(key, 0))
            exp.append(e)
        else:
            rest_obs += observed.get(key, 0)
            rest_exp += e
    if rest_exp > 0:
        obs.append(rest_obs)
        exp.append(rest_exp)
    scale = sum(obs) / sum(exp)  # float32 probabilities sum to 1 only within rounding
    return obs, [e * scale for e in exp]


@pytest.mark.parametrize(
    "sample", [sd.Sample(), sd.Sample(temperature=0.7, top_k=20), sd.Sample(top_p=0.9)], ids=["plain", "t-k", "p"]
)
def test_the_first_token_follows_the_processed_distribution(tiny, sample):
    n, calls = 16, 30
    seen: Counter = Counter()
    for seed in range(calls):
        spec = sd.ArithmeticSampling(n, sample=sd.Sample(**{**_fields(sample), "seed": seed}))
        out = sd.generate(tiny, PROMPT, max_tokens=1, search=spec)
        seen.update(h.tokens[0] for h in out.hypotheses)
    probs = _first_token_probs(tiny, sample)
    expected = {t: float(p) * n * calls for t, p in enumerate(probs.tolist()) if p > 0}
    assert set(seen) <= set(expected)  # nothing outside top-k / top-p
    observed, wanted = _pooled(seen, expected, 5.0)
    assert stats.chisquare(observed, wanted).pvalue > 1e-3


def _fields(sample: sd.Sample) -> dict:
    return {"temperature": sample.temperature, "top_k": sample.top_k, "top_p": sample.top_p, "min_p": sample.min_p}


@pytest.mark.parametrize("position", [0, 1, 2])
def test_each_position_s_marginal_matches_ordinary_sampling(tiny, position):
    n, calls = 16, 25
    arithmetic: Counter = Counter()
    for seed in range(calls):
        out = sd.generate(tiny, PROMPT, max_tokens=3, search=sd.ArithmeticSampling(n, sample=sd.Sample(seed=seed)))
        arithmetic.update(h.tokens[position] for h in out.hypotheses if len(h.tokens) > position)
    sampled = sd.generate(tiny, PROMPT, max_tokens=3, search=sd.Sample(n=n * calls, seed=123)).hypotheses
    ordinary = Counter(h.tokens[position] for h in sampled if len(h.tokens) > position)
    keys = [k for k in set(arithmetic) | set(ordinary) if arithmetic[k] + ordinary[k] >= 10]
    table = [[arithmetic[k] for k in keys], [ordinary[k] for k in keys]]
    table[0].append(arithmetic.total() - sum(table[0]))
    table[1].append(ordinary.total() - sum(table[1]))
    assert len(keys) >= 5
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_the_second_token_follows_the_model_given_the_first(tiny):
    # The code is rescaled into the first token's interval: the second token then follows the
    # model's conditional distribution (a code left as it was would tie it to the first token).
    n, calls, sharp = 16, 30, sd.Sample(temperature=0.5)
    pairs: Counter = Counter()
    for seed in range(calls):
        spec = sd.ArithmeticSampling(n, sample=sd.Sample(temperature=0.5, seed=seed))
        out = sd.generate(tiny, PROMPT, max_tokens=2, search=spec)
        pairs.update(tuple(h.tokens) for h in out.hypotheses if len(h.tokens) == 2)
    first = Counter(a for a, _ in pairs.elements()).most_common(1)[0][0]
    seen = Counter({b: c for (a, b), c in pairs.items() if a == first})
    node = sd.Node((*tiny.encode(PROMPT), first))
    probs = sharp.process(tiny.logits([node])).softmax(dim=-1)[0].double()
    tiny.cache.discard(node)
    expected = {t: float(p) * seen.total() for t, p in enumerate(probs.tolist())}
    observed, wanted = _pooled(seen, expected, 5.0)
    assert seen.total() >= 50 and len(observed) >= 3
    assert stats.chisquare(observed, wanted).pvalue > 1e-3


def test_evenly_spaced_codes_give_each_token_its_rounded_share(tiny):
    n = 64
    out = sd.generate(tiny, PROMPT, max_tokens=1, search=sd.ArithmeticSampling(n, sample=sd.Sample(seed=5)))
    counts = Counter(h.tokens[0] for h in out.hypotheses)
    probs = _first_token_probs(tiny, sd.Sample())
    for token, p in enumerate(probs.tolist()):
        share = n * p
        assert int(share - 1e-6) <= counts.get(token, 0) <= int(share + 1e-6) + 1, (token, share)


def test_codes_keep_full_precision_over_long_outputs():
    # With two equally likely tokens, decoding a code reads out its binary digits: the shift's bits
    # for offset 0, and the same bits with the first one flipped for offset 1/2. Floats would stop
    # after 53 digits.
    seed, steps = 17, 200
    rng = random.Random(seed)
    bits = "".join(format(rng.getrandbits(32), "032b") for _ in range(steps // 32 + 1))[:steps]
    half = torch.tensor([0.5, 0.5])
    shift = Shift(seed)
    zero, opposite = CodePoint(shift, Fraction(0)), CodePoint(shift, Fraction(1, 2))
    assert "".join(str(zero.pick(half)) for _ in range(steps)) == bits
    flipped = "".join(str(opposite.pick(half)) for _ in range(steps))
    assert flipped[1:] == bits[1:] and flipped[0] != bits[0]


def test_a_retry_decodes_the_same_code_from_the_edited_distribution():
    probs = torch.tensor([0.2, 0.3, 0.5])
    for offset in (Fraction(0), Fraction(1, 3), Fraction(2, 3)):
        code = CodePoint(Shift(3), offset)
        first = code.pick(probs)
        edited = probs.clone()
        edited[first] = 0.0
        again = code.pick(edited / edited.sum(), retry=True)
        fresh = CodePoint(Shift(3), offset)
        assert again == fresh.pick(edited / edited.sum()) and again != first
        assert (code.low, code.width) == (fresh.low, fresh.width)


def test_outputs_follow_a_constraint_and_a_seed_repeats_them(tiny):
    spec = sd.ArithmeticSampling(6, sample=sd.Sample(seed=9))
    out = sd.generate(tiny, PROMPT, max_tokens=8, constraint=sd.regex(r"[a-z]{2,6}"), search=spec)
    again = sd.generate(tiny, PROMPT, max_tokens=8, constraint=sd.regex(r"[a-z]{2,6}"), search=spec)
    assert [h.tokens for h in out.hypotheses] == [h.tokens for h in again.hypotheses]
    assert all(h.text.isalpha() and 2 <= len(h.text) <= 6 for h in out.hypotheses if h.finish_reason == "stop")
    assert len(tiny.cache) == 0


@pytest.mark.parametrize(
    "kwargs, error, words",
    [({"n": 0}, ValueError, "n must be >= 1"), ({"sample": 0.7}, TypeError, "sample must be sd.Sample")],
)
def test_bad_input_is_a_specific_early_error(kwargs, error, words):
    with pytest.raises(error, match=words):
        sd.ArithmeticSampling(**kwargs)
