"""Sampling: seeded runs reproduce, and drawn tokens follow the processed model distribution."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import searchdec as sd
from searchdec.search import Node

SETTINGS = [
    dict(temperature=0.7),
    dict(temperature=1.3, top_k=12),
    dict(temperature=1.0, top_p=0.8),
    dict(temperature=0.9, min_p=0.05),
    dict(temperature=1.1, top_k=40, top_p=0.9, min_p=0.02),
]


def reference_distribution(logits: np.ndarray, temperature=1.0, top_k=None, top_p=1.0, min_p=0.0) -> np.ndarray:
    """The processed next-token distribution, written out independently in numpy."""
    scores = logits.astype(np.float64) / temperature
    keep = np.ones_like(scores, dtype=bool)
    if top_k is not None:
        keep &= scores >= np.sort(scores)[-top_k]
    scores = np.where(keep, scores, -np.inf)
    if top_p < 1.0:
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        mass_before = np.cumsum(probs[order]) - probs[order]
        keep_sorted = mass_before < top_p  # smallest prefix whose mass reaches top_p
        keep = np.zeros_like(keep)
        keep[order[keep_sorted]] = True
        scores = np.where(keep, scores, -np.inf)
    if min_p > 0:
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        scores = np.where(probs >= min_p * probs.max(), scores, -np.inf)
    probs = np.exp(scores - scores.max())
    return probs / probs.sum()


def first_token_counts(model, prompt, search, draws):
    out = sd.generate(model, prompt, max_tokens=1, search=search)
    counts = np.zeros(model.vocab_size)
    for h in out.hypotheses:
        counts[h.tokens[0]] += 1
    assert counts.sum() == draws
    return counts


def chi_square_pvalue(counts, expected_probs):
    support = expected_probs > 0
    assert counts[~support].sum() == 0, "a token outside the processed distribution was drawn"
    expected = expected_probs[support] * counts.sum()
    # Pool rare cells so the chi-square approximation holds.
    rare = expected < 5
    obs = np.append(counts[support][~rare], counts[support][rare].sum())
    exp = np.append(expected[~rare], expected[rare].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return chisquare(obs, exp).pvalue


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_sampled_tokens_follow_the_processed_distribution(tiny, settings):
    prompt = "The quick brown fox"
    logits = tiny.logits([Node(tuple(tiny.encode(prompt)))])[0].numpy()
    expected = reference_distribution(logits, **settings)
    counts = first_token_counts(tiny, prompt, sd.Sample(**settings, n=20000, seed=1), 20000)
    assert chi_square_pvalue(counts, expected) > 1e-3


def test_distribution_test_rejects_a_wrong_distribution(tiny):
    """The statistical test has power: sampling at temperature 1 is rejected against temperature 0.7."""
    prompt = "The quick brown fox"
    logits = tiny.logits([Node(tuple(tiny.encode(prompt)))])[0].numpy()
    counts = first_token_counts(tiny, prompt, sd.Sample(temperature=1.0, n=20000, seed=1), 20000)
    assert chi_square_pvalue(counts, reference_distribution(logits, temperature=0.7)) < 1e-6


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_warpers_equal_transformers_logits_processors(settings):
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    ours = sd.Sample(**settings).process(logits)
    theirs = TemperatureLogitsWarper(settings.get("temperature", 1.0))(None, logits.clone())
    if settings.get("top_k"):
        theirs = TopKLogitsWarper(settings["top_k"])(None, theirs)
    if settings.get("top_p", 1.0) < 1.0:
        theirs = TopPLogitsWarper(settings["top_p"])(None, theirs)
    if settings.get("min_p", 0.0) > 0:
        theirs = MinPLogitsWarper(settings["min_p"])(None, theirs)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    torch.testing.assert_close(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)])


def test_seeded_sampling_is_reproducible(tiny):
    search = sd.Sample(temperature=1.0, top_p=0.95, n=3, seed=1234)
    first = sd.generate(tiny, "Once upon a time", max_tokens=24, search=search)
    second = sd.generate(tiny, "Once upon a time", max_tokens=24, search=search)
    assert [h.tokens for h in first.hypotheses] == [h.tokens for h in second.hypotheses]
    assert len({tuple(h.tokens) for h in first.hypotheses}) > 1  # the n hypotheses are distinct draws
    other = sd.generate(
        tiny, "Once upon a time", max_tokens=24, search=sd.Sample(temperature=1.0, top_p=0.95, n=3, seed=99)
    )
    assert [h.tokens for h in other.hypotheses] != [h.tokens for h in first.hypotheses]


def test_n_hypotheses_share_the_prompt_forward(tiny):
    prompt = "a shared prompt of some length"
    before = tiny.stats.tokens
    out = sd.generate(tiny, prompt, max_tokens=5, search=sd.Sample(n=4, seed=0))
    assert len(out.hypotheses) == 4
    generated_tokens_forwarded = sum(len(h.tokens) - 1 for h in out.hypotheses)
    assert tiny.stats.tokens - before == len(tiny.encode(prompt)) + generated_tokens_forwarded


def test_a_vanishing_temperature_samples_the_arg_max(tiny):
    out = sd.generate(tiny, "ab", max_tokens=8, search=sd.Sample(temperature=1e-300, n=3, seed=0))
    greedy = sd.generate(tiny, "ab", max_tokens=8)
    assert all(h.tokens == greedy.tokens for h in out.hypotheses)
