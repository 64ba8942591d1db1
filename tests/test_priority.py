"""Priority sampling (search/priority.py): unique outputs in non-increasing priority, the first the
greedy one, priorities that are the log-probabilities of the branches' prefixes, under a
constraint too; it stops when the tree has no branch left."""

from __future__ import annotations

import pytest

import searchdec as sd

PROMPTS = ["hello", "abc def", "x"]


@pytest.mark.parametrize("constraint", [None, sd.regex(r"[a-z]{1,6}")], ids=["free", "regex"])
def test_outputs_are_unique_in_non_increasing_priority_and_the_first_is_greedy(tiny, constraint):
    greedy = sd.generate(tiny, PROMPTS, max_tokens=6, constraint=constraint)
    out = sd.generate(tiny, PROMPTS, max_tokens=6, constraint=constraint, search=sd.PrioritySampling(8))
    for g, o in zip(greedy, out):
        assert len(o.hypotheses) == 8
        assert o.hypotheses[0].tokens == g.tokens and o.hypotheses[0].token_logprobs == g.token_logprobs
        assert len({tuple(h.tokens) for h in o.hypotheses}) == 8
        scores = [h.score for h in o.hypotheses]
        assert scores == sorted(scores, reverse=True) and scores[0] == 0.0
        for h in o.hypotheses:  # a branch's prefix is at least as probable as the whole output
            assert h.logprob <= h.score + 1e-9
        if constraint is not None:
            assert all(h.finish_reason != "stop" or h.text.isalpha() for h in o.hypotheses)
    assert len(tiny.cache) == 0


def test_a_score_is_the_log_probability_of_the_prefix_through_the_branch_token(tiny):
    out = sd.generate(tiny, "hello", max_tokens=5, search=sd.PrioritySampling(6))
    greedy = out.hypotheses[0]
    for h in out.hypotheses[1:]:
        # Each output leaves an earlier output at some position; its score is the log-probability of
        # its tokens up to and including the first one that no earlier output has at that prefix.
        earlier = [e.tokens for e in out.hypotheses[: out.hypotheses.index(h)]]
        split = max(next((k for k, (a, b) in enumerate(zip(h.tokens, e)) if a != b), len(e)) for e in earlier)
        assert h.score == pytest.approx(sum(h.token_logprobs[: split + 1]), abs=1e-4)
    assert greedy.score == 0.0


def test_the_order_follows_the_most_probable_unexpanded_branch(tiny):
    # The second output branches where the best alternative to a greedy token is most probable.
    out = sd.generate(tiny, "hello", max_tokens=4, search=sd.PrioritySampling(2))
    greedy = out.hypotheses[0].tokens
    best = float("-inf")
    for k in range(len(greedy)):
        node = sd.Node(tuple(tiny.encode("hello") + greedy[:k]))
        row = tiny.logits([node])[0].log_softmax(-1)
        tiny.cache.discard(node)
        prefix = sum(out.hypotheses[0].token_logprobs[:k])
        row[greedy[k]] = float("-inf")
        best = max(best, prefix + float(row.max()))
    assert out.hypotheses[1].score == pytest.approx(best, abs=1e-4)


def test_it_stops_when_no_branch_is_left(tiny):
    out = sd.generate(
        tiny, "hello", max_tokens=8, constraint=sd.choice(["yes", "no", "maybe"]), search=sd.PrioritySampling(10)
    )
    assert sorted(h.text for h in out.hypotheses) == ["maybe", "no", "yes"]


def test_a_branch_that_cannot_close_within_max_tokens_is_dropped(tiny):
    constraint = sd.choice(["a", "bcdefgh"])
    out = sd.generate(tiny, "hello", max_tokens=4, constraint=constraint, search=sd.PrioritySampling(4))
    assert [(h.text, h.finish_reason) for h in out.hypotheses] == [("a", "stop")]
    roomy = sd.generate(tiny, "hello", max_tokens=8, constraint=constraint, search=sd.PrioritySampling(4))
    assert sorted(h.text for h in roomy.hypotheses) == ["a", "bcdefgh"]


def test_a_narrow_branching_still_gives_unique_outputs(tiny):
    out = sd.generate(tiny, "hello", max_tokens=5, search=sd.PrioritySampling(6, branching=1))
    assert len({tuple(h.tokens) for h in out.hypotheses}) == 6


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"n": 0}, ValueError, "n must be >= 1"),
        ({"branching": 0}, ValueError, "branching must be >= 1"),
        ({"n": 2.5}, TypeError, "n must be an int"),
    ],
)
def test_bad_input_is_a_specific_early_error(kwargs, error, words):
    with pytest.raises(error, match=words):
        sd.PrioritySampling(**kwargs)


def test_the_server_builds_priority_sampling_from_its_search_field():
    pytest.importorskip("fastapi")
    from searchdec.server.errors import APIError
    from searchdec.server.searches import SearchContext, build

    assert build({"algorithm": "priority"}, SearchContext(n=3)) == sd.PrioritySampling(3)
    assert build({"algorithm": "priority", "branching": 2}, SearchContext(n=3)) == sd.PrioritySampling(3, 2)
    for bad, param in [({"branching": 0}, "search"), ({"branching": 1.5}, "search"), ({"n": 4}, "search.n")]:
        with pytest.raises(APIError) as caught:
            build({"algorithm": "priority", **bad}, SearchContext(n=3))
        assert caught.value.status == 400 and caught.value.param == param, bad
