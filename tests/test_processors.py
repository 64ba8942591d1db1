"""Logit processors (search/processors.py): each equals transformers' processor or vLLM's formula on
random logits and token histories, seeded sampling through the decoding step follows the processed
distribution (chi-square), every search that samples applies them, and bad settings are early errors
naming the field."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TypicalLogitsWarper,
)

import searchdec as sd
from searchdec.search import Node
from searchdec.search.processors import Processors
from searchdec.search.rows import Decoder, Row, Rule, Stopping, generator

VOCAB = 300


def random_case(seed: int, rows: int = 6, length: int = 40, vocab: int = VOCAB, alphabet: int = 12):
    """Random logits (some negative, some positive) and equal-length histories drawn from a small
    alphabet, so tokens and n-grams repeat."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * 3
    histories = torch.randint(0, alphabet, (rows, length), generator=g)
    return logits, histories


def penalize(settings: dict, logits: torch.Tensor, histories: torch.Tensor, generated: int) -> torch.Tensor:
    rows = [h.tolist() for h in histories]
    return sd.Sample(**settings).penalize(logits, rows, [generated] * len(rows))


# --- each processor equals its reference, exactly --------------------------------------------------


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.5])
@pytest.mark.parametrize("seed", range(3))
def test_repetition_penalty_equals_transformers(penalty, seed):
    logits, histories = random_case(seed)
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(histories, logits.clone())
    assert torch.equal(penalize({"repetition_penalty": penalty}, logits, histories, 10), theirs)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_no_repeat_ngram_equals_transformers(size, seed):
    logits, histories = random_case(seed, alphabet=4 if size > 2 else 12)
    theirs = NoRepeatNGramLogitsProcessor(size)(histories, logits.clone())
    ours = penalize({"no_repeat_ngram_size": size}, logits, histories, 10)
    assert torch.isinf(theirs).any()  # the case bans something
    assert torch.equal(ours, theirs)


def test_no_repeat_ngram_on_rows_of_different_lengths_equals_transformers_row_by_row():
    logits, histories = random_case(7, alphabet=3)
    rows = [histories[i, : 5 + 7 * i].tolist() for i in range(len(histories))]
    ours = sd.Sample(no_repeat_ngram_size=3).penalize(logits, rows, [0] * len(rows))
    for i, row in enumerate(rows):
        theirs = NoRepeatNGramLogitsProcessor(3)(torch.tensor([row]), logits[i : i + 1].clone())
        assert torch.equal(ours[i : i + 1], theirs)


@pytest.mark.parametrize(
    ("name", "value", "warper"),
    [
        ("typical_p", 0.2, TypicalLogitsWarper),
        ("typical_p", 0.9, TypicalLogitsWarper),
        ("epsilon_cutoff", 3e-4, EpsilonLogitsWarper),
        ("epsilon_cutoff", 0.02, EpsilonLogitsWarper),
        ("eta_cutoff", 3e-4, EtaLogitsWarper),
        ("eta_cutoff", 0.05, EtaLogitsWarper),
    ],
)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_truncation_warpers_equal_transformers_after_temperature(name, value, warper, temperature):
    logits, _ = random_case(11)
    ours = sd.Sample(temperature=temperature, **{name: value}).process(logits)
    theirs = warper(value)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
    assert torch.isinf(theirs).any() and not torch.isinf(theirs).all(dim=-1).any()
    assert torch.equal(ours, theirs)


def test_warpers_compose_in_transformers_order():
    """top-k, then typical, epsilon, eta: transformers' `_get_logits_processor` order."""
    logits, _ = random_case(12)
    ours = sd.Sample(temperature=0.9, top_k=100, typical_p=0.95, epsilon_cutoff=1e-3, eta_cutoff=1e-3).process(logits)
    theirs = TemperatureLogitsWarper(0.9)(None, logits.clone())
    for warper in (TopKLogitsWarper(100), TypicalLogitsWarper(0.95), EpsilonLogitsWarper(1e-3), EtaLogitsWarper(1e-3)):
        theirs = warper(None, theirs)
    assert torch.equal(ours, theirs)


def test_greedy_takes_the_arg_max_of_what_typical_keeps():
    logits, _ = random_case(13)
    kept = TypicalLogitsWarper(0.3)(None, logits.clone())
    assert sd.Greedy(typical_p=0.3).draw(logits)[:, 0].tolist() == kept.argmax(dim=-1).tolist()


def vllm_apply_penalties(logits, prompt, output, presence, frequency, repetition):
    """vLLM's `apply_penalties` (vllm/model_executor/layers/utils.py) with its torch repetition rule
    (`apply_repetition_penalties_torch`), re-typed for the test: prompt and output tokens padded
    with vocab_size, bin counts by scatter_add."""
    rows, vocab = logits.shape

    def bins(tokens):
        counts = torch.zeros((rows, vocab + 1), dtype=torch.long)
        counts.scatter_add_(1, tokens, torch.ones_like(tokens))
        counts = counts[:, :vocab]
        return counts, counts > 0

    _, prompt_mask = bins(prompt)
    output_counts, output_mask = bins(output)
    penalties = torch.where(prompt_mask | output_mask, torch.full((rows, vocab), repetition), 1.0)
    logits = logits * torch.where(logits > 0, 1.0 / penalties, penalties)
    logits -= torch.full((rows,), frequency).unsqueeze(dim=1) * output_counts
    logits -= torch.full((rows,), presence).unsqueeze(dim=1) * output_mask
    return logits


@pytest.mark.parametrize(("presence", "frequency"), [(0.5, 0.0), (0.0, 0.7), (1.5, -0.4), (-2.0, 2.0)])
def test_openai_penalties_equal_vllm_formula(presence, frequency):
    logits, histories = random_case(21)
    prompt_length = 25
    ours = penalize({"presence_penalty": presence, "frequency_penalty": frequency}, logits, histories, 15)
    pad = torch.full((histories.shape[0], 1), VOCAB)
    theirs = vllm_apply_penalties(
        logits.clone(), pad, histories[:, prompt_length:], presence, frequency, 1.0
    )  # presence and frequency count the generated tokens only
    assert torch.equal(ours, theirs)


def test_openai_penalties_ignore_the_prompt():
    logits, histories = random_case(22)
    assert torch.equal(penalize({"presence_penalty": 1.0, "frequency_penalty": 1.0}, logits, histories, 0), logits)


def test_logit_bias_then_penalties_equal_vllm_sampler_order():
    """vLLM's sampler adds the logit bias, then applies repetition, frequency, presence
    (vllm/v1/sample/sampler.py `Sampler.forward`); vLLM multiplies by 1/penalty where transformers
    divides, hence float32 rounding (one ulp) between the two."""
    logits, histories = random_case(23)
    bias = {3: 2.5, 7: -4.0, 250: 10.0}
    settings = {"logit_bias": bias, "repetition_penalty": 1.4, "presence_penalty": 0.3, "frequency_penalty": 0.2}
    ours = penalize(settings, logits, histories, 15)
    biased = logits.clone()
    biased[:, list(bias)] += torch.tensor(list(bias.values()))
    theirs = vllm_apply_penalties(biased, histories[:, :25], histories[:, 25:], 0.3, 0.2, 1.4)
    torch.testing.assert_close(ours, theirs, rtol=1.2e-7, atol=0)


def test_logit_bias_and_repetition_equal_transformers_sequence_bias_order():
    logits, histories = random_case(24)
    bias = {3: 2.5, 7: -4.0}
    ours = penalize({"logit_bias": bias, "repetition_penalty": 1.4}, logits, histories, 15)
    theirs = SequenceBiasLogitsProcessor({(t,): b for t, b in bias.items()})(histories, logits.clone())
    theirs = RepetitionPenaltyLogitsProcessor(1.4)(histories, theirs)
    assert torch.equal(ours, theirs)


def test_no_processor_set_changes_nothing_and_computes_nothing():
    assert not sd.Sample().penalizes and not sd.Sample().truncates
    assert not sd.Greedy().penalizes and not sd.Greedy().truncates
    logits, _ = random_case(25)
    assert torch.equal(sd.Sample(temperature=1.0).process(logits), logits)


# --- greedy decoding equals transformers' generate -------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"repetition_penalty": 1.5},
        {"no_repeat_ngram_size": 2},
        {"repetition_penalty": 0.8, "no_repeat_ngram_size": 3},
        {"logit_bias": {104: 3.0, 120: -5.0}, "repetition_penalty": 1.2},
    ],
    ids=lambda s: ",".join(s),
)
def test_greedy_with_processors_is_token_identical_to_transformers_generate(tiny, settings):
    prompt = "hello hello"
    ids = tiny.encode(prompt)
    hf_settings = dict(settings)
    if "logit_bias" in hf_settings:
        hf_settings["sequence_bias"] = {(t,): b for t, b in hf_settings.pop("logit_bias").items()}
    with torch.no_grad():
        out = tiny.hf.generate(
            torch.tensor([ids]), max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0, **hf_settings
        )
    expected = out[0, len(ids) :].tolist()
    plain = sd.generate(tiny, prompt, max_tokens=30).tokens
    ours = sd.generate(tiny, prompt, max_tokens=30, search=sd.Greedy(**settings)).tokens
    assert ours == expected[: len(ours)] and len(ours) == 30
    assert ours != plain  # the processors changed the output


# --- seeded sampling follows the processed distribution ---------------------------------------------

PROMPT = "ab ab cd"
FORCED = "qr "  # the model's two likeliest letters here, so that penalizing them matters
DRAWS = 4000
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
CHI_SQUARE = [
    {"repetition_penalty": 3.0},
    {"no_repeat_ngram_size": 2},
    {"presence_penalty": 2.0},
    {"frequency_penalty": 1.5},
    {"logit_bias": {"e": 3.0, "q": 2.0}},
    {"typical_p": 0.5},
    {"epsilon_cutoff": 0.03},
    {"eta_cutoff": 0.1},
]


def reference(tiny, settings: dict, history: list[int], generated: list[int]) -> np.ndarray:
    """The expected next-token distribution after `history`, built from transformers' processors,
    vLLM's formula and the mask, in float64 from the model's logits."""
    logits = tiny.logits([Node(tuple(history))])[0].clone().unsqueeze(0)
    ids = torch.tensor([history])
    if "logit_bias" in settings:
        for token, bias in settings["logit_bias"].items():
            logits[0, token] += bias
    if "repetition_penalty" in settings:
        logits = RepetitionPenaltyLogitsProcessor(settings["repetition_penalty"])(ids, logits)
    if "no_repeat_ngram_size" in settings:
        logits = NoRepeatNGramLogitsProcessor(settings["no_repeat_ngram_size"])(ids, logits)
    counts = np.bincount(generated, minlength=logits.shape[-1])
    logits = logits - torch.tensor(settings.get("frequency_penalty", 0.0) * counts, dtype=torch.float32)
    logits = logits - torch.tensor(settings.get("presence_penalty", 0.0) * (counts > 0), dtype=torch.float32)
    allowed = torch.full_like(logits, float("-inf"))
    letters = [tiny.encode(c)[0] for c in LETTERS]
    allowed[0, letters] = 0.0
    logits = logits + allowed
    if "typical_p" in settings:
        logits = TypicalLogitsWarper(settings["typical_p"])(None, logits)
    if "epsilon_cutoff" in settings:
        logits = EpsilonLogitsWarper(settings["epsilon_cutoff"])(None, logits)
    if "eta_cutoff" in settings:
        logits = EtaLogitsWarper(settings["eta_cutoff"])(None, logits)
    scores = logits[0].double().numpy()
    probs = np.exp(scores - scores.max())
    return probs / probs.sum()


def draw_after_forced(tiny, settings: dict, draws: int, seed: int = 5) -> np.ndarray:
    """Counts of `draws` next tokens, each row with its own generator, chosen by one step of the
    decoding step at a node whose last tokens the grammar forced: "q" was chosen under
    `sd.regex("qr [a-z]")`, which then forced "r " (jump-forward), as `rows._child` builds it."""
    constraint = sd.regex(FORCED + "[a-z]").compile(tiny)
    prompt, forced = tiny.encode(PROMPT), tiny.encode(FORCED)
    root = Node(tuple(prompt), state=constraint.start())
    node = Node(tuple(forced), root, (0.0,), state=root.state.advance_many(forced), forced=len(forced) - 1)
    rule = Rule(Stopping(8, tiny.eos_token_ids, (), tiny.context_window))
    policy = sd.Sample(**settings)
    rows = [
        Row(node, root, len(prompt), rule, policy, generator(seed * 100_003 + i, tiny.device)) for i in range(draws)
    ]
    Decoder(tiny).advance(rows)
    counts = np.zeros(tiny.vocab_size)
    for row in rows:
        counts[row.node.new_tokens[0]] += 1
    return counts


def letter_settings(tiny, settings: dict) -> dict:
    if "logit_bias" in settings:
        return {"logit_bias": {tiny.encode(c)[0]: b for c, b in settings["logit_bias"].items()}}
    return settings


@pytest.mark.parametrize("settings", CHI_SQUARE, ids=lambda s: ",".join(s))
def test_sampled_token_follows_the_processed_distribution_after_forced_tokens(tiny, settings):
    """The next token after forced text is drawn with "q", "r", " " in the generated history, from
    the processed logits masked to the letters — penalties before the mask, warpers after it."""
    settings = letter_settings(tiny, settings)
    counts = draw_after_forced(tiny, settings, DRAWS)
    history = tiny.encode(PROMPT) + tiny.encode(FORCED)
    expected = reference(tiny, settings, history, tiny.encode(FORCED))
    assert counts[expected == 0].sum() == 0, "a token outside the processed distribution was drawn"
    assert chi_square_pvalue(counts, expected) > 1e-3
    unprocessed = reference(tiny, {}, history, tiny.encode(FORCED))
    assert chi_square_pvalue(counts, unprocessed) < 1e-6  # the test has power: the setting matters here


def test_generate_counts_forced_tokens_as_generated_history(tiny):
    """End to end: `sd.generate` under the grammar samples the fourth token as the decoding step does."""
    settings, draws = {"presence_penalty": 2.0}, 400
    out = sd.generate(
        tiny, PROMPT, max_tokens=4, constraint=sd.regex(FORCED + "[a-z]"), search=sd.Sample(n=draws, seed=5, **settings)
    )
    counts = np.zeros(tiny.vocab_size)
    for h in out.hypotheses:
        assert h.tokens[:3] == tiny.encode(FORCED)
        counts[h.tokens[3]] += 1
    history = tiny.encode(PROMPT) + tiny.encode(FORCED)
    assert chi_square_pvalue(counts, reference(tiny, settings, history, tiny.encode(FORCED))) > 1e-3
    assert chi_square_pvalue(counts, reference(tiny, {}, history, tiny.encode(FORCED))) < 1e-3


def chi_square_pvalue(counts: np.ndarray, expected_probs: np.ndarray) -> float:
    support = expected_probs > 0
    if counts[~support].sum():
        return 0.0
    expected = expected_probs[support] * counts.sum()
    rare = expected < 5  # pooled, so that the chi-square approximation holds
    obs = np.append(counts[support][~rare], counts[support][rare].sum())
    exp = np.append(expected[~rare], expected[rare].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return chisquare(obs, exp).pvalue


# --- every search that samples applies them -------------------------------------------------------


def repeated_bigrams(tokens: list[int], start: int) -> list[tuple[int, int]]:
    """Bigrams ending at a position >= start that already occurred earlier in `tokens`."""
    seen, repeats = set(), []
    for i in range(1, len(tokens)):
        bigram = (tokens[i - 1], tokens[i])
        if i >= start and bigram in seen:
            repeats.append(bigram)
        seen.add(bigram)
    return repeats


def length_reward(prompt, output):
    return float(len(output))


def step_lengths(prompt: str, steps: list[str]) -> list[float]:
    return [float(len(step) % 7) for step in steps]


SEARCHES = {
    "sample": lambda s: s,
    "best_of_n": lambda s: sd.BestOfN(n=3, sample=s, reward=length_reward),
    "first_finish": lambda s: sd.FirstFinish(n=3, num_return=1, sample=s),
    "step_beam": lambda s: sd.StepBeam(2, 2, step_lengths, step=" ", max_step_tokens=6, sample=s),
    "dvts": lambda s: sd.DVTS(2, 2, step_lengths, step=" ", max_step_tokens=6, sample=s),
    # step-level MCTS: its steps and its rollouts are sampled rows (token-level MCTS expands the model's top tokens)
    "mcts": lambda s: sd.MCTS(3, step=" ", rollout="sample", sample=s, reward=length_reward),
}


@pytest.mark.parametrize("name", SEARCHES)
def test_every_sampling_search_applies_the_processors(tiny, name):
    prompt = "abab"
    ids = tiny.encode(prompt)
    plain = sd.generate(tiny, prompt, max_tokens=40, search=SEARCHES[name](sd.Sample(temperature=0.3, seed=3)))
    assert any(repeated_bigrams(ids + h.tokens, len(ids)) for h in plain.hypotheses)  # the test can fail
    search = SEARCHES[name](sd.Sample(temperature=0.3, seed=3, no_repeat_ngram_size=2))
    out = sd.generate(tiny, prompt, max_tokens=40, search=search)
    for h in out.hypotheses:
        assert not repeated_bigrams(ids + h.tokens, len(ids)), h.tokens


def test_greedy_with_processors_on_an_executor_equals_in_process(tiny):
    search = sd.Greedy(repetition_penalty=1.5, no_repeat_ngram_size=3)
    alone = sd.generate(tiny, ["hello", "abab"], max_tokens=20, search=search)
    spread = sd.generate(tiny, ["hello", "abab"], max_tokens=20, search=search, executor=sd.InProcessExecutor())
    assert [g.tokens for g in alone] == [g.tokens for g in spread]


def test_processors_compose_with_a_constraint(tiny):
    import json

    import jsonschema

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}, "required": ["name"]}
    search = sd.Sample(n=4, seed=2, presence_penalty=2.0, frequency_penalty=1.0, repetition_penalty=1.3)
    out = sd.generate(tiny, "A person:", max_tokens=40, constraint=sd.json_schema(schema), search=search)
    for h in out.hypotheses:
        if h.finish_reason == "stop":
            jsonschema.validate(json.loads(h.text), schema)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": -1.2}, "repetition_penalty"),
        ({"repetition_penalty": 1e-40}, "repetition_penalty"),
        ({"typical_p": 0.0}, "typical_p"),
        ({"typical_p": 1.5}, "typical_p"),
        ({"epsilon_cutoff": -0.1}, "epsilon_cutoff"),
        ({"epsilon_cutoff": 1.0}, "epsilon_cutoff"),
        ({"eta_cutoff": -1e-3}, "eta_cutoff"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.01}, "frequency_penalty"),
        ({"frequency_penalty": math.nan}, "frequency_penalty"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"no_repeat_ngram_size": 1.5}, "no_repeat_ngram_size"),
        ({"logit_bias": {1: "high"}}, "logit_bias"),
        ({"logit_bias": {"1": 2.0}}, "logit_bias"),
        ({"logit_bias": {-3: 2.0}}, "logit_bias"),
        ({"logit_bias": {1: math.inf}}, "logit_bias"),
        ({"logit_bias": [1, 2]}, "logit_bias"),
    ],
)
@pytest.mark.parametrize("policy", [sd.Sample, sd.Greedy])
def test_bad_settings_are_errors_naming_the_field(policy, settings, field):
    with pytest.raises(ValueError, match=field):
        policy(**settings)


def test_a_logit_bias_id_outside_the_vocabulary_fails_before_generation(tiny):
    before = tiny.stats.tokens
    outside = sd.Sample(logit_bias={10**6: 1.0})
    for search in (sd.Sample(logit_bias={tiny.vocab_size: 1.0}), sd.BestOfN(n=2, sample=outside, reward=length_reward)):
        with pytest.raises(ValueError, match="logit_bias"):
            sd.generate(tiny, "hi", max_tokens=4, search=search)
    assert tiny.stats.tokens == before  # nothing was forwarded


def test_processor_settings_are_keyword_only_and_samples_hash():
    assert sd.Sample(0.5, 10, 0.9, 0.1, 2, 7).seed == 7  # positional order unchanged
    assert hash(sd.Sample(logit_bias={1: 2.0})) == hash(sd.Sample(logit_bias={1: 2.0}))
    assert sd.Sample(logit_bias={1: 2}).logit_bias == {1: 2.0}
    assert isinstance(sd.Greedy(), Processors)


def test_speculative_refuses_history_penalties_it_would_not_apply():
    with pytest.raises(ValueError, match="repetition_penalty"):
        sd.Speculative(sample=sd.Sample(repetition_penalty=1.2))
    assert sd.Speculative(sample=sd.Sample(typical_p=0.9)).sample.truncates  # warpers are in its p and q
