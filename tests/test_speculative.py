"""Speculative decoding: greedy output is token-identical to the target's, the sampling rule leaves
the target's distribution unchanged (and a broken rule is caught), constraints hold, and the prefix
cache keeps the accepted part of each verifying forward."""

import json

import jsonschema
import pytest
import torch
from scipy import stats as scipy_stats
from tiny import tiny_model

import searchdec as sd
from searchdec.search import speculative
from searchdec.search.speculative import accept_or_resample

PROMPTS = ["abc abc abc", "the cat sat on the mat; the cat", "0101010101", "x"]


@pytest.mark.parametrize("draft", ["prompt_lookup", "model", "self"])
def test_greedy_is_token_identical_to_the_target(tiny, draft):
    source = {"prompt_lookup": "prompt_lookup", "model": tiny_model(seed=5), "self": sd.SelfSpeculative(layers=1)}
    for prompt in PROMPTS:
        reference = sd.generate(tiny, prompt, max_tokens=24)
        spec = sd.Speculative(draft=source[draft], k=3)
        out = sd.generate(tiny, prompt, max_tokens=24, search=spec)
        assert out.tokens == reference.tokens
        assert out.token_logprobs == pytest.approx(reference.token_logprobs, abs=1e-4)
        assert out.stats.generated == len(out.tokens)


def test_the_heuristic_schedule_grows_the_draft_while_all_is_accepted_and_stays_lossless(tiny):
    for prompt in PROMPTS:
        reference = sd.generate(tiny, prompt, max_tokens=24)
        spec = sd.Speculative(draft="prompt_lookup", k=2, schedule="heuristic", max_k=8)
        assert sd.generate(tiny, prompt, max_tokens=24, search=spec).tokens == reference.tokens
    same = sd.Speculative(draft=tiny_model(seed=0), k=1, schedule="heuristic", max_k=7)  # always accepted
    constant = sd.Speculative(draft=tiny_model(seed=0), k=1)
    grown = sd.generate(tiny, "x", max_tokens=40, search=same).stats
    fixed = sd.generate(tiny, "x", max_tokens=40, search=constant).stats
    # k grows 1, 3, 5, 7, 7... while all is accepted (a long draft may lose a near-tie to rounding).
    assert grown.acceptance_rate > 0.8
    assert grown.target_calls < fixed.target_calls / 2


def test_a_draft_that_agrees_with_the_target_is_accepted_whole(tiny):
    spec = sd.Speculative(draft=tiny_model(seed=0), k=4)  # the target itself as the draft
    out = sd.generate(tiny, "x", max_tokens=25, search=spec)
    assert out.stats.acceptance_rate == 1.0
    assert out.stats.target_calls <= 1 + -(-(len(out.tokens) - 1) // 5)  # k + 1 tokens per target call
    assert out.stats.target_calls_avoided == len(out.tokens) - out.stats.target_calls > 0


def chi_square_of(rule, p, q, draws=60_000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros_like(p)
    drafted = torch.multinomial(q, draws, replacement=True, generator=generator)
    for d in drafted.tolist():
        extra = rule(p, q, d, generator)
        counts[d if extra is None else extra] += 1
    return scipy_stats.chisquare(counts.numpy(), (p * draws).numpy()).pvalue


P = torch.tensor([0.35, 0.25, 0.15, 0.1, 0.08, 0.05, 0.02])
Q = torch.tensor([0.05, 0.1, 0.4, 0.2, 0.05, 0.1, 0.1])


def test_the_sampling_rule_reproduces_the_target_distribution():
    assert chi_square_of(accept_or_resample, P, Q) > 1e-3
    assert chi_square_of(accept_or_resample, P, torch.nn.functional.one_hot(torch.tensor(2), 7).float()) > 1e-3


def test_a_broken_sampling_rule_is_caught():
    def accept_everything(p, q, token, generator):
        return None

    def resample_from_p(p, q, token, generator):  # a common mistake: resampling from p, not p - q
        if float(torch.rand((), generator=generator)) * float(q[token]) < float(p[token]):
            return None
        return int(torch.multinomial(p, 1, generator=generator))

    assert chi_square_of(accept_everything, P, Q) < 1e-6
    assert chi_square_of(resample_from_p, P, Q) < 1e-6


def test_sampled_speculative_output_matches_target_sampling_on_a_tiny_model(tiny):
    # The second token is the first one verified: its distribution must equal the target's marginal.
    draft = tiny_model(seed=7)
    prompt = "ab"
    root = tiny.encode(prompt)
    from searchdec.search import Node

    first = tiny.logits([Node(tuple(root))])[0].softmax(-1)
    top = first.topk(4).indices.tolist()
    second = tiny.logits([Node(tuple(root) + (t,)) for t in top]).softmax(-1)
    exact = (first[top].unsqueeze(1) * second).sum(0)  # P(second token, first in top-4)
    counts = torch.zeros_like(exact)
    draws = drafted = 0
    for seed in range(1500):
        spec = sd.Speculative(draft=draft, k=2, sample=sd.Sample(seed=seed))
        # max_tokens=3: the second token is drafted and verified (at 2 nothing would be drafted)
        out = sd.generate(tiny, prompt, max_tokens=3, search=spec)
        drafted += out.stats.drafted
        if out.tokens[0] in top and len(out.tokens) >= 2:
            counts[out.tokens[1]] += 1
            draws += 1
    assert drafted >= 1500  # every run verified at least one drafted token: the rule under test ran
    expected = exact / exact.sum() * draws
    keep = expected > 5
    observed = torch.cat([counts[keep], counts[~keep].sum(0, keepdim=True)])
    wanted = torch.cat([expected[keep], expected[~keep].sum(0, keepdim=True)])
    assert scipy_stats.chisquare(observed.numpy(), wanted.numpy()).pvalue > 1e-3


def test_constrained_speculative_output_equals_constrained_greedy(tiny):
    spec = sd.regex(r"(ab|ba)[0-9]{2}-(x|yz)")  # finishes long before max_tokens: no budget steering
    for prompt in PROMPTS:
        out = sd.generate(tiny, prompt, max_tokens=64, constraint=spec, search=sd.Speculative(k=4))
        reference = sd.generate(tiny, prompt, max_tokens=64, constraint=spec, jump_forward=False)
        assert out.tokens == reference.tokens


def test_constrained_speculative_json_validates(tiny):
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    draft = tiny_model(seed=3)
    out = sd.generate(tiny, "x", max_tokens=60, constraint=sd.json_schema(schema), search=sd.Speculative(draft, k=3))
    assert out.finish_reason in ("stop", "length")
    if out.finish_reason == "stop":
        jsonschema.validate(json.loads(out.text), schema)


def test_verification_forwards_each_token_once(tiny):
    tiny.stats.tokens = 0
    spec = sd.Speculative(k=4)
    out = sd.generate(tiny, "abc abc abc abc", max_tokens=20, search=spec)
    prompt = len(tiny.encode("abc abc abc abc"))
    # Prompt once, then per target call its pending token and the drafts (rejected drafts are the only waste).
    assert tiny.stats.tokens <= prompt + len(out.tokens) + out.stats.drafted - out.stats.accepted


def test_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        sd.Speculative(k=0)
    with pytest.raises(TypeError, match="draft must be"):
        sd.Speculative(draft="ngram")
    with pytest.raises(ValueError, match="schedule"):
        sd.Speculative(schedule="adaptive")
    with pytest.raises(ValueError, match="max_k"):
        sd.Speculative(k=8, max_k=4)
    with pytest.raises(ValueError, match="layers"):
        sd.SelfSpeculative(layers=0)
    with pytest.raises(ValueError, match="min_ngram"):
        sd.PromptLookup(max_ngram=1, min_ngram=2)
    assert speculative.PromptLookup().max_ngram == 3


@pytest.mark.integration
def test_real_model_speculative_greedy_is_token_identical_on_22_prompts(smollm):
    from test_smollm_integration import PROMPTS as REAL_PROMPTS

    references = sd.generate(smollm, REAL_PROMPTS, max_tokens=32)
    lookup = sd.Speculative(k=4)
    for prompt, reference in zip(REAL_PROMPTS, references):
        assert sd.generate(smollm, prompt, max_tokens=32, search=lookup).tokens == reference.tokens
    early_exit = sd.Speculative(draft=sd.SelfSpeculative(layers=8), k=3)
    for prompt, reference in list(zip(REAL_PROMPTS, references))[:2]:
        assert sd.generate(smollm, prompt, max_tokens=32, search=early_exit).tokens == reference.tokens
