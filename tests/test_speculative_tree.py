"""Lossless speculative methods of issue 16: multi-draft verification as a token tree
(`sd.Speculative(drafts=k)`), suffix-automaton drafts (`draft="suffix"`) and lookahead decoding
(`sd.Lookahead`). Greedy output is token-identical to target greedy, the multi-draft sampling rule
keeps the target's distribution (and a broken one is caught), constraints hold, the tree forward
equals a full recompute and its accepted path keeps its cache entry."""

import pytest
import torch
from scipy import stats as scipy_stats
from test_speculative import PROMPTS, chi_square_of
from tiny import tiny_model

import searchdec as sd
from searchdec.search import Node
from searchdec.search.drafts import SuffixAutomaton
from searchdec.search.speculative import recursive_rejection

P = torch.tensor([0.35, 0.25, 0.15, 0.1, 0.08, 0.05, 0.02])
Q = torch.tensor([0.05, 0.1, 0.4, 0.2, 0.05, 0.1, 0.1])

TREE_TOKENS = [10, 11, 12, 13, 14, 15]
TREE_PARENTS = [-1, 0, 0, -1, 3, 1]


def _path(j: int) -> list[int]:
    tokens = []
    while j >= 0:
        tokens.insert(0, TREE_TOKENS[j])
        j = TREE_PARENTS[j]
    return tokens


def test_a_tree_forward_equals_a_full_recompute_of_every_path(tiny):
    root = Node(tuple(tiny.encode("hello world")))
    tiny.logits([root])
    base = root.child((5,), ())
    out = tiny.logits_tree(Node(tuple(TREE_TOKENS), base), TREE_PARENTS)
    fresh = tiny_model()
    prefix = [*root.new_tokens, 5]
    for row, tokens in enumerate([prefix] + [prefix + _path(j) for j in range(len(TREE_TOKENS))]):
        assert torch.allclose(out[row], fresh.logits([Node(tuple(tokens))])[0], atol=1e-4), row


@pytest.mark.parametrize("shared", [False, True], ids=["moved in place", "copied"])
def test_a_kept_tree_path_continues_like_a_full_recompute(tiny, shared):
    root = Node(tuple(tiny.encode("hello world")))
    tiny.logits([root])
    base = root.child((5,), ())
    verify = Node(tuple(TREE_TOKENS), base)
    tiny.logits_tree(verify, TREE_PARENTS)
    entry = tiny.cache.get(verify)
    tiny.cache.discard(verify)
    if shared:  # another entry reaching into the tree's positions: the path must be copied out
        tiny.cache.put(object(), entry)
    kept = base.child((10, 11, 15), ())
    tiny.cache.put_branch(kept, entry, entry.length - len(TREE_TOKENS), [0, 1, 5])
    tokens_before = tiny.stats.tokens
    nxt = kept.child((7,), ())
    reference = tiny_model().logits([Node((*root.new_tokens, 5, 10, 11, 15, 7))])[0]
    assert torch.allclose(tiny.logits([nxt])[0], reference, atol=1e-4)
    assert tiny.stats.tokens == tokens_before + 1  # only the new token was forwarded


def test_bad_trees_are_refused(tiny):
    base = Node(tuple(tiny.encode("hi")))
    with pytest.raises(ValueError, match="parents\\[1\\]"):
        tiny.logits_tree(Node((1, 2), base), [-1, 1])
    with pytest.raises(ValueError, match="one parent per tree token"):
        tiny.logits_tree(Node((1, 2), base), [-1])


SOURCES = {
    "lookup x3": lambda: sd.Speculative(k=4, drafts=3),
    "model x3": lambda: sd.Speculative(draft=tiny_model(seed=5), k=3, drafts=3),
    "self x2": lambda: sd.Speculative(draft=sd.SelfSpeculative(layers=1), k=3, drafts=2),
    "suffix": lambda: sd.Speculative(draft="suffix"),
    "suffix x3": lambda: sd.Speculative(draft="suffix", drafts=3),
    "lookahead": lambda: sd.Lookahead(),
}


@pytest.mark.parametrize("name", list(SOURCES))
def test_greedy_is_token_identical_to_the_target(tiny, name):
    spec = SOURCES[name]()
    for prompt in PROMPTS:
        reference = sd.generate(tiny, prompt, max_tokens=30)
        out = sd.generate(tiny, prompt, max_tokens=30, search=spec)
        assert out.tokens == reference.tokens, prompt
        assert out.token_logprobs == pytest.approx(reference.token_logprobs, abs=1e-4)
        assert out.stats.generated == len(out.tokens)
    assert len(tiny.cache) == 0


@pytest.mark.parametrize("name", ["lookup x3", "model x3", "suffix x3", "lookahead"])
def test_constrained_tree_verification_equals_constrained_greedy(tiny, name):
    spec = sd.regex(r"(ab|ba)[0-9]{2}-(x|yz)[a-c]{3}")
    for prompt in PROMPTS[:3]:
        out = sd.generate(tiny, prompt, max_tokens=64, constraint=spec, search=SOURCES[name]())
        reference = sd.generate(tiny, prompt, max_tokens=64, constraint=spec, jump_forward=False)
        assert out.tokens == reference.tokens


def test_tree_verification_forwards_each_token_once(tiny):
    spec = sd.Speculative(k=4, drafts=3)
    prompt = "abc abd abe abc abd abe abc"
    tiny.stats.tokens = 0
    out = sd.generate(tiny, prompt, max_tokens=30, search=spec)
    # The prompt once, then per target call its pending token and the tree (unaccepted nodes are the waste).
    assert tiny.stats.tokens <= len(tiny.encode(prompt)) + len(out.tokens) + out.stats.drafted - out.stats.accepted
    assert out.stats.drafted > out.stats.target_calls  # several drafts per call were verified


def test_several_lookup_matches_are_drafted_as_a_tree():
    drafter = sd.PromptLookup(max_ngram=1).start(None, None)
    tree = drafter.propose([1, 2, 1, 3, 1, 4, 1], k=2, limit=8, width=3, state=None, sample=None, generator=None)
    assert sorted(tuple(tree.tokens[i] for i in tree.path(leaf)) for leaf in (1, 3, 5)) == [(2, 1), (3, 1), (4, 1)]


def test_the_suffix_automaton_finds_the_most_recent_earlier_occurrence_and_stops_at_separators():
    automaton = SuffixAutomaton()
    automaton.extend_many([1, 2, 3, 9, 1, 2, 4, -5, 1, 2])
    found = automaton.continuations(automaton.last, 10, 10, limit=4)
    assert found[0] == (2, 5)  # "1 2" last ended at position 5 (before the current one at 9)
    assert automaton.follow(5, 4) == [4]  # not past the separator
    assert automaton.follow(1, 2) == [3, 9]
    state, matched = 0, 0
    for token in [7, 1, 2]:
        state, matched = automaton.step(state, matched, token)
    assert matched == 2


def test_suffix_drafts_reuse_earlier_outputs_of_the_same_source(tiny):
    spec = sd.Speculative(draft="suffix")
    prompt = "x"
    first = sd.generate(tiny, prompt, max_tokens=40, search=spec)
    again = sd.generate(tiny, prompt, max_tokens=40, search=spec)
    assert again.tokens == first.tokens
    assert again.stats.acceptance_rate == 1.0  # every draft came from the first call's output
    assert again.stats.target_calls < first.stats.target_calls
    fresh = sd.generate(tiny, prompt, max_tokens=40, search=sd.Speculative(draft="suffix"))
    assert fresh.stats.target_calls == first.stats.target_calls  # a new spec starts with no history


def test_lookahead_accepts_jacobi_guesses(tiny):
    out = sd.generate(tiny, "x", max_tokens=40, search=sd.Lookahead())
    assert out.stats.tokens_per_target_call > 1.0


def test_recursive_rejection_reproduces_the_target_distribution():
    def three_draws(p, q, token, generator):  # the drafted token plus two more independent draws from q
        draws = [token, *torch.multinomial(q, 2, replacement=True, generator=generator).tolist()]
        index, result = recursive_rejection(p, q, draws, generator)
        return None if index == 0 else result

    def distinct_guesses(p, q, token, generator):  # deterministic drafts (lookup matches): q a point mass
        index, result = recursive_rejection(p, None, [token, (token + 1) % len(p), (token + 3) % len(p)], generator)
        return None if index == 0 else result

    assert chi_square_of(three_draws, P, Q, draws=40_000) > 1e-3
    assert chi_square_of(distinct_guesses, P, Q, draws=40_000) > 1e-3


def test_a_broken_multi_draft_rule_is_caught():
    def residual_never_updated(p, q, token, generator):  # each draft tested against p, not the residual
        draws = [token, *torch.multinomial(q, 2, replacement=True, generator=generator).tolist()]
        for draft in draws:
            if float(torch.rand((), generator=generator)) * float(q[draft]) < float(p[draft]):
                return None if draft == token else draft
        residual = (p - q).clamp_min(0)
        return int(torch.multinomial(residual / residual.sum(), 1, generator=generator))

    assert chi_square_of(residual_never_updated, P, Q, draws=40_000) < 1e-6


def test_sampled_multi_draft_output_matches_target_sampling_on_a_tiny_model(tiny):
    # The first token comes from the root forward, the second through a tree of 3 independent draws:
    # its marginal must be the target's (warped by the same temperature).
    draft, warp, prompt = tiny_model(seed=7), sd.Sample(temperature=0.5), "ab"
    root = tuple(tiny.encode(prompt))
    first = warp.process(tiny.logits([Node(root)])).softmax(-1)[0]
    second = warp.process(tiny.logits([Node((*root, t)) for t in range(len(first))])).softmax(-1)
    exact = (first.unsqueeze(1) * second).sum(0)
    counts = torch.zeros_like(exact)
    for seed in range(300):
        spec = sd.Speculative(draft=draft, k=1, drafts=3, sample=sd.Sample(temperature=0.5, seed=seed))
        counts[sd.generate(tiny, prompt, max_tokens=3, search=spec).tokens[1]] += 1
    expected = exact * counts.sum()
    keep = expected > 5
    observed = torch.cat([counts[keep], counts[~keep].sum(0, keepdim=True)])
    wanted = torch.cat([expected[keep], expected[~keep].sum(0, keepdim=True)])
    assert scipy_stats.chisquare(observed.numpy(), wanted.numpy()).pvalue > 1e-3


def test_bad_arguments():
    with pytest.raises(ValueError, match="drafts must be"):
        sd.Speculative(drafts=0)
    with pytest.raises(TypeError, match="draft must be"):
        sd.Speculative(draft="suffixes")
    with pytest.raises(ValueError, match="max_depth"):
        sd.SuffixDraft(max_depth=0)
    with pytest.raises(ValueError, match="factor"):
        sd.SuffixDraft(factor=0)
    with pytest.raises(ValueError, match="window"):
        sd.Lookahead(window=0)
    with pytest.raises(ValueError, match="ngram"):
        sd.Lookahead(ngram=1)
    with pytest.raises(ValueError, match="candidates"):
        sd.Lookahead(candidates=0)
    with pytest.raises(ValueError, match="sample.n"):
        sd.Lookahead(sample=sd.Sample(n=2))


@pytest.mark.integration
def test_real_model_tree_suffix_and_lookahead_greedy_are_token_identical(smollm):
    from test_smollm_integration import PROMPTS as REAL_PROMPTS

    prompts = [REAL_PROMPTS[0], REAL_PROMPTS[-1]]
    references = sd.generate(smollm, prompts, max_tokens=24)
    specs = [sd.Speculative(k=4, drafts=3), sd.Speculative(draft="suffix", drafts=2), sd.Lookahead()]
    for spec in specs:
        for prompt, reference in zip(prompts, references):
            assert sd.generate(smollm, prompt, max_tokens=24, search=spec).tokens == reference.tokens, spec


def test_the_server_search_extension_builds_them_and_refuses_bad_fields():
    from searchdec.server import searches
    from searchdec.server.errors import APIError

    context = searches.SearchContext(n=1)
    spec = searches.build({"algorithm": "speculative", "draft": "suffix", "drafts": 3}, context)
    assert isinstance(spec, sd.Speculative) and spec.drafts == 3 and isinstance(spec.source, sd.SuffixDraft)
    assert searches.build({"algorithm": "lookahead", "window": 3}, context).window == 3
    for bad, field, words in [
        ({"algorithm": "speculative", "drafts": 0}, "search", "drafts must be within"),
        ({"algorithm": "speculative", "draft": "model"}, "search", "draft must be"),
        ({"algorithm": "lookahead", "ngram": 1}, "search", "ngram must be within"),
        ({"algorithm": "lookahead", "width": 3}, "search.width", "no parameter 'width'"),
    ]:
        with pytest.raises(APIError, match=words) as caught:
            searches.build(bad, context)
        assert caught.value.param == field and caught.value.status == 400
    with pytest.raises(APIError, match="n must be 1"):
        searches.build({"algorithm": "lookahead"}, searches.SearchContext(n=2))
