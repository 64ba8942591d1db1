"""Contrastive decoding (search/contrastive.py) against a direct implementation of its formulas: each
step recomputes both models over the whole sequence with no cache, scores the plausible tokens
(Li et al.: log p_e - log p_a; O'Brien & Lewis: (1 + beta) l_e - beta l_a), gives the others -inf,
applies the grammar's mask after the contrast, and takes the arg-max."""

import math

import pytest
import torch
from tiny import byte_tokenizer, tiny_model
from transformers import LlamaConfig, LlamaForCausalLM

import searchdec as sd
from searchdec.search.contrastive import contrast

PROMPTS = ["hello", "abc def", "The cat", "zq"]


def early_exit_logits(model: sd.Model, layers: int):
    """The amateur as the paper-free definition says: hidden state after `layers` layers, final norm, LM head."""

    def logits(ids: torch.Tensor) -> torch.Tensor:
        hidden = model.hf(ids, output_hidden_states=True).hidden_states[layers]
        return model.hf.lm_head(model.hf.model.norm(hidden))[0, -1].float()

    return logits


def full_logits(model: sd.Model):
    return lambda ids: model.hf(ids).logits[0, -1].float()


@torch.no_grad()
def direct(expert, amateur_logits, prompt, max_tokens, alpha, beta=None, constraint=None):
    """Tokens and reported log-probabilities of contrastive greedy decoding, step by step, no cache."""
    ids = expert.encode(prompt)
    state = constraint.compile(expert).start() if constraint is not None else None
    tokens, logprobs = [], []
    for _ in range(max_tokens):
        x = torch.tensor([ids + tokens])
        le, la = full_logits(expert)(x), amateur_logits(x)
        pe = le.softmax(-1)
        plausible = pe >= alpha * pe.max()
        scores = le.log_softmax(-1) - la.log_softmax(-1) if beta is None else (1 + beta) * le - beta * la
        scores = scores.masked_fill(~plausible, -math.inf)
        reported = scores.log_softmax(-1)  # a hypothesis reports the scores' log-probabilities before the mask
        if state is not None:
            allowed = torch.tensor([state.allows(t) for t in range(len(scores))])
            if not (allowed & plausible).any():  # nothing plausible is allowed: the expert ranks the allowed
                token = int(le.log_softmax(-1).masked_fill(~allowed, -math.inf).argmax())
                tokens.append(token)
                logprobs.append(None)
                state = state.advance(token)
                if state.finished or token in expert.eos_token_ids:
                    break
                continue
            scores = scores.masked_fill(~allowed, -math.inf)
        token = int(scores.argmax())
        tokens.append(token)
        logprobs.append(float(reported[token]))
        if token in expert.eos_token_ids:
            break
        if state is not None:
            state = state.advance(token)
            if state.finished:
                break
    return tokens, logprobs


def check_equal(out, expected):
    tokens, logprobs = expected
    assert out.tokens == tokens
    for got, want in zip(out.token_logprobs, logprobs):
        if want is not None:
            assert got == pytest.approx(want, abs=1e-3)


def test_early_exit_amateur_equals_the_formula_step_by_step(tiny):
    outs = sd.generate(tiny, PROMPTS, max_tokens=12, search=sd.Contrastive(amateur=sd.EarlyExit(1), alpha=0.05))
    greedy = sd.generate(tiny, PROMPTS, max_tokens=12)
    for prompt, out in zip(PROMPTS, outs):
        check_equal(out, direct(tiny, early_exit_logits(tiny, 1), prompt, 12, alpha=0.05))
    assert any(o.tokens != g.tokens for o, g in zip(outs, greedy))  # the contrast changed something
    assert len(tiny.cache) == 0


def test_a_second_model_as_amateur_equals_the_formula_step_by_step(tiny):
    amateur = tiny_model(seed=3)
    outs = sd.generate(tiny, PROMPTS, max_tokens=12, search=sd.Contrastive(amateur=amateur, alpha=0.05))
    for prompt, out in zip(PROMPTS, outs):
        check_equal(out, direct(tiny, full_logits(amateur), prompt, 12, alpha=0.05))
    assert len(tiny.cache) == 0 and len(amateur.cache) == 0


def test_obrien_lewis_form_equals_the_formula_step_by_step(tiny):
    amateur = tiny_model(seed=3)
    search = sd.Contrastive(amateur=amateur, alpha=0.1, beta=0.5)
    outs = sd.generate(tiny, PROMPTS, max_tokens=12, search=search)
    for prompt, out in zip(PROMPTS, outs):
        check_equal(out, direct(tiny, full_logits(amateur), prompt, 12, alpha=0.1, beta=0.5))
    li = sd.generate(tiny, PROMPTS, max_tokens=12, search=sd.Contrastive(amateur=amateur, alpha=0.1))
    assert any(a.tokens != b.tokens for a, b in zip(outs, li))  # beta selects a different formula


def test_int_amateur_is_the_expert_s_first_layers(tiny):
    by_int = sd.generate(tiny, "hello", max_tokens=10, search=sd.Contrastive(amateur=1))
    by_name = sd.generate(tiny, "hello", max_tokens=10, search=sd.Contrastive(amateur=sd.EarlyExit(1)))
    assert by_int.tokens == by_name.tokens and by_int.token_logprobs == by_name.token_logprobs


def test_alpha_one_keeps_only_the_expert_s_arg_max(tiny):
    out = sd.generate(tiny, PROMPTS, max_tokens=12, search=sd.Contrastive(amateur=1, alpha=1.0))
    greedy = sd.generate(tiny, PROMPTS, max_tokens=12)
    assert [o.tokens for o in out] == [g.tokens for g in greedy]


def test_the_grammar_mask_applies_after_the_contrast(tiny):
    word = sd.regex(r"[a-z ]{1,8}\.")
    search = sd.Contrastive(amateur=1, alpha=0.05)
    for prompt in PROMPTS:
        out = sd.generate(tiny, prompt, max_tokens=12, constraint=word, search=search)
        check_equal(out, direct(tiny, early_exit_logits(tiny, 1), prompt, 12, alpha=0.05, constraint=word))


def test_a_grammar_that_forbids_every_plausible_token_leaves_the_expert_s_ranking_of_the_allowed(tiny):
    first = int(sd.generate(tiny, "hello", max_tokens=1).tokens[0])
    options = [c for c in "xyzq" if tiny.encode(c, add_special_tokens=False) != [first]][:2]
    constraint = sd.choice(options)
    out = sd.generate(tiny, "hello", max_tokens=4, constraint=constraint, search=sd.Contrastive(1, alpha=1.0))
    plain = sd.generate(tiny, "hello", max_tokens=4, constraint=constraint)
    assert out.finish_reason == "stop" and out.text in options
    assert out.text == plain.text
    assert all(math.isfinite(v) for v in out.token_logprobs)


@torch.no_grad()
def all_plausible(model, prompt, tokens, alpha) -> bool:
    ids = model.encode(prompt)
    for i, token in enumerate(tokens):
        pe = full_logits(model)(torch.tensor([ids + tokens[:i]])).softmax(-1)
        if pe[token] < alpha * pe.max():
            return False
    return True


def test_sampled_tokens_are_always_plausible(tiny):
    search = sd.Contrastive(1, alpha=0.2, search=sd.Sample(n=4, seed=7))
    out = sd.generate(tiny, "abc", max_tokens=10, search=search)
    assert len({tuple(h.tokens) for h in out.hypotheses}) > 1
    assert all(all_plausible(tiny, "abc", h.tokens, 0.2) for h in out.hypotheses)
    plain = sd.generate(tiny, "abc", max_tokens=10, search=sd.Sample(n=4, seed=7))
    assert not all(all_plausible(tiny, "abc", h.tokens, 0.2) for h in plain.hypotheses)  # the check can fail


def test_beam_search_runs_over_the_contrastive_scores(tiny):
    search = sd.Contrastive(1, alpha=0.1, search=sd.Beam(3, num_return=3))
    out = sd.generate(tiny, "hello", max_tokens=8, search=search)
    assert len(out.hypotheses) == 3 and out.trace is not None
    assert all(all_plausible(tiny, "hello", h.tokens, 0.1) for h in out.hypotheses)
    assert len(tiny.cache) == 0


def test_contrast_gives_implausible_tokens_zero_probability_and_a_finite_floor():
    expert = torch.tensor([[4.0, 3.0, 0.0, -5.0]])
    amateur = torch.tensor([[4.0, 1.0, 2.0, 0.0]])
    scores = contrast(expert, amateur, alpha=0.1, beta=None)
    assert torch.isfinite(scores).all()
    probs = scores.softmax(-1)[0]
    assert probs[2] == 0 and probs[3] == 0 and probs[1] > probs[0]  # token 1 wins: the amateur likes it less
    manual = expert.log_softmax(-1) - amateur.log_softmax(-1)
    assert scores[0, :2].tolist() == pytest.approx(manual[0, :2].tolist())


# --- bad input: specific errors before any forward ----------------------------------------------------


@pytest.mark.parametrize("alpha", [0, 0.0, -0.1, 1.5, float("nan"), True])
def test_alpha_outside_0_1_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha must be in"):
        sd.Contrastive(amateur=1, alpha=alpha)


@pytest.mark.parametrize("beta", [-0.5, 1e7, float("inf"), float("nan")])
def test_a_negative_or_infinite_beta_is_refused(beta):
    with pytest.raises(ValueError, match="beta must be"):
        sd.Contrastive(amateur=1, beta=beta)


@pytest.mark.parametrize("amateur", [0, -2])
def test_early_exit_needs_at_least_one_layer(amateur):
    with pytest.raises(ValueError, match="EarlyExit layers must be >= 1"):
        sd.Contrastive(amateur=amateur)


def test_an_amateur_of_the_wrong_type_is_refused():
    with pytest.raises(TypeError, match="amateur must be"):
        sd.Contrastive(amateur="smollm2-135m")


def test_a_speculative_inner_search_is_refused():
    with pytest.raises(ValueError, match="cannot run Speculative"):
        sd.Contrastive(amateur=1, search=sd.Speculative())


def test_early_exit_at_or_beyond_the_expert_s_depth_is_refused_before_any_forward(tiny):
    with pytest.raises(ValueError, match=r"EarlyExit\(2\).*below the target's 2 layers"):
        sd.generate(tiny, "hello", max_tokens=4, search=sd.Contrastive(amateur=2))
    assert tiny.stats.calls == 0


def test_an_amateur_with_another_vocabulary_size_is_refused_before_any_forward(tiny):
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    amateur = sd.Model(LlamaForCausalLM(config), tokenizer)
    with pytest.raises(ValueError, match="same tokenizer"):
        sd.generate(tiny, "hello", max_tokens=4, search=sd.Contrastive(amateur=amateur))
    assert tiny.stats.calls == 0 and amateur.stats.calls == 0


def test_an_amateur_with_another_tokenizer_of_the_same_size_is_refused(tiny):
    amateur = tiny_model(seed=1)
    vocab = amateur.tokenizer.get_vocab()
    a, b = sorted(vocab)[:2]
    amateur.tokenizer = _FakeVocab({**vocab, a: vocab[b], b: vocab[a]})
    with pytest.raises(ValueError, match="tokenizer differs"):
        sd.generate(tiny, "hello", max_tokens=4, search=sd.Contrastive(amateur=amateur))
    assert tiny.stats.calls == 0


class _FakeVocab:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return self.vocab


# --- the server: `search: {"algorithm": "contrastive", ...}` -------------------------------------------


def test_the_server_serves_contrastive_decoding_as_a_script_gets_it():
    openai = pytest.importorskip("openai")
    from live_server import LiveServer

    from searchdec.server import create_app

    model = tiny_model()
    expected = sd.generate(tiny_model(), "hello", max_tokens=10, search=sd.Contrastive(1, alpha=0.05, beta=0.5))
    with LiveServer(create_app(model, "tiny")) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        search = {"algorithm": "contrastive", "layers": 1, "alpha": 0.05, "beta": 0.5}
        r = client.completions.create(model="tiny", prompt="hello", max_tokens=10, extra_body={"search": search})
        assert r.choices[0].text == expected.text
        for search, n in [({"layers": 2}, 1), ({"layers": 1, "alpha": 0}, 1), ({}, 1), ({"layers": 1}, 2)]:
            body = {"search": {"algorithm": "contrastive", **search}}
            with pytest.raises(openai.BadRequestError) as error:
                client.completions.create(model="tiny", prompt="hello", max_tokens=4, n=n, extra_body=body)
            assert error.value.param == "search", search
    assert len(model.cache) == 0
