"""First-finish search: the winner is the first of n seeded samples to finish, decoding of the
others stops there (fewer tokens forwarded than decoding all n to the end), and bad input fails early."""

import pytest

import searchdec as sd

MESSAGES = [{"role": "user", "content": "Name a fruit."}]


@pytest.mark.integration
def test_first_finish_returns_the_shortest_of_the_same_seeded_samples_with_fewer_tokens(smollm):
    sample = sd.Sample(temperature=1.0, seed=3)
    before = smollm.stats.tokens
    everything = sd.generate(smollm, MESSAGES, max_tokens=40, search=sd.Sample(1.0, n=6, seed=3))
    full_cost = smollm.stats.tokens - before
    finished = [h for h in everything.hypotheses if h.finish_reason == "stop"]
    assert len(finished) >= 2, "the seeded run should finish several samples"
    shortest = min(len(h.tokens) for h in finished)

    before, entries = smollm.stats.tokens, len(smollm.cache)  # other tests may hold entries of their own
    out = sd.generate(smollm, MESSAGES, max_tokens=40, search=sd.FirstFinish(6, sample=sample))
    cost = smollm.stats.tokens - before
    assert out.finish_reason == "stop"
    assert len(out.tokens) == shortest
    assert out.tokens in [h.tokens for h in finished if len(h.tokens) == shortest]
    assert out.score == -shortest
    assert cost < full_cost
    assert len(smollm.cache) == entries


def test_first_finish_stops_at_num_return_finished_and_cuts_the_rest_under_a_constraint(tiny):
    word = sd.regex(r"[a-z]{1,20}")
    search = sd.FirstFinish(8, num_return=2, sample=sd.Sample(seed=2))
    out = sd.generate(tiny, "hello", max_tokens=24, constraint=word, search=search)
    assert len(out.hypotheses) == 2
    assert all(h.finish_reason == "stop" for h in out.hypotheses)
    assert len(out.hypotheses[0].tokens) <= len(out.hypotheses[1].tokens)
    for h in out.hypotheses:
        assert h.tokens[-1] in tiny.eos_token_ids or len(h.text) == 20
        assert 1 <= len(h.text) <= 20 and h.text.isalpha() and h.text.islower()
    nodes = out.trace.to_dict()["nodes"]
    cut = [n for n in nodes if n["status"] == "pruned"]
    assert cut and all(n["finish_reason"] == "length" for n in cut)
    assert all(n["depth"] <= len(out.hypotheses[1].tokens) for n in cut)  # cut when the second finished
    assert len(tiny.cache) == 0


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: sd.FirstFinish(0), ValueError),
        (lambda: sd.FirstFinish(2, num_return=3), ValueError),
        (lambda: sd.FirstFinish(2, sample=sd.Greedy()), TypeError),
    ],
)
def test_first_finish_bad_parameters_fail_early(make, error):
    with pytest.raises(error):
        make()
