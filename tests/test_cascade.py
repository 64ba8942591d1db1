"""Shared-prefix (cascade) attention: rows read one stored copy of their common prefix, and every
result equals plain attention over each row's whole sequence."""

import pytest
import torch
from tiny import tiny_model

import searchdec as sd
from searchdec.models import cascade
from searchdec.search import Node

PROMPT = tuple(range(40, 100))


@pytest.fixture
def tiny():
    """The tiny model with shared-prefix attention on (it is off by default)."""
    return tiny_model(shared_prefix=True)


def full_logits(model, tokens):
    """Logits after `tokens` from one plain transformers forward (sdpa attention, no cache)."""
    with torch.inference_mode():
        return model.hf(torch.tensor([list(tokens)])).logits[0, -1].float()


def tokens_of(node):
    out = []
    while node is not None:
        out[:0] = node.new_tokens
        node = node.parent
    return out


def test_rows_sharing_a_prefix_with_different_suffix_lengths_equal_plain_attention(tiny):
    assert tiny.shared_prefix and tiny.hf.config._attn_implementation == cascade.ATTENTION_NAME
    root = Node(PROMPT)
    tiny.logits([root])
    prompt_entry = tiny.cache.get(root)
    children = [Node((1,), root), Node((2, 3, 4), root), Node((5, 6), root)]
    grandchildren = [Node((7,), children[1]), Node((8, 9, 10, 11), children[0]), Node((12,), children[1])]
    for batch in (children, grandchildren, [Node((13,), grandchildren[2]), Node((14, 15), children[2])]):
        logits = tiny.logits(batch)
        for node, row in zip(batch, logits):
            torch.testing.assert_close(row, full_logits(tiny, tokens_of(node)), rtol=0, atol=1e-5)
            assert tiny.cache.get(node).prefix is prompt_entry  # the prompt is held once, by reference
    # Only the new tokens went through the network, the prompt once.
    assert tiny.stats.tokens == len(PROMPT) + 6 + 6 + 3


def test_the_merge_equals_softmax_attention_over_the_concatenated_keys():
    torch.manual_seed(0)
    rows, kv_heads, group, n, dim, shared, own = 3, 2, 2, 4, 8, 11, 6
    query = torch.randn(rows, kv_heads * group, n, dim)
    prefix_k, prefix_v = torch.randn(1, kv_heads, shared, dim), torch.randn(1, kv_heads, shared, dim)
    keys, values = torch.randn(rows, kv_heads, own, dim), torch.randn(rows, kv_heads, own, dim)
    visible = torch.rand(rows, 1, n, own) > 0.4
    visible[0] = False  # a row that sees none of its own keys (only the prefix)
    module = torch.nn.Module()
    module.layer_idx = 0
    out, _ = cascade.cascade_attention(
        module, query, keys, values, visible, shared_prefix=cascade.SharedPrefix((prefix_k,), (prefix_v,))
    )
    all_k = torch.cat([prefix_k.expand(rows, -1, -1, -1), keys], 2).repeat_interleave(group, 1)
    all_v = torch.cat([prefix_v.expand(rows, -1, -1, -1), values], 2).repeat_interleave(group, 1)
    all_visible = torch.cat([torch.ones(rows, 1, n, shared, dtype=torch.bool), visible], 3)
    expected = torch.nn.functional.scaled_dot_product_attention(query, all_k, all_v, attn_mask=all_visible)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=0, atol=1e-5)


def test_beam_reorders_copy_only_suffixes_and_results_equal_the_plain_path():
    with_prefix, without = tiny_model(shared_prefix=True), tiny_model()
    without.shared_prefix = False
    prompt = "The shared prompt of every beam " * 3
    search = sd.Beam(width=4, num_return=4)
    a = sd.generate(with_prefix, prompt, max_tokens=12, search=search)
    b = sd.generate(without, prompt, max_tokens=12, search=search)
    assert [h.tokens for h in a.hypotheses] == [h.tokens for h in b.hypotheses]
    assert [h.score for h in a.hypotheses] == pytest.approx([h.score for h in b.hypotheses], abs=1e-5)
    # The prompt was stored once, not once per beam: the peak is far below four prompt copies.
    assert with_prefix.cache.peak_bytes < without.cache.peak_bytes / 2
    assert with_prefix.stats.tokens == without.stats.tokens
    assert len(with_prefix.cache) == 0


@pytest.mark.parametrize(
    "search",
    [
        sd.BestOfN(n=6, reward=lambda prompt, text: float(len(text)), sample=sd.Sample(seed=3)),
        sd.MCTS(simulations=6, reward=lambda prompt, text: 0.5),
    ],
    ids=["best-of-n", "mcts"],
)
def test_best_of_n_and_mcts_forward_and_store_the_prompt_once(search):
    model, plain = tiny_model(shared_prefix=True), tiny_model()
    plain.shared_prefix = False
    prompt = "A long prompt that every hypothesis grows from. " * 4
    n_prompt = len(model.encode(prompt))
    a = sd.generate(model, prompt, max_tokens=8, search=search)
    b = sd.generate(plain, prompt, max_tokens=8, search=search)
    assert a.tokens == b.tokens
    # The prompt went through the network once; the rest is generated tokens (fewer than the prompt's).
    assert model.stats.tokens == plain.stats.tokens
    assert model.stats.tokens - n_prompt < n_prompt
    # One copy of the prompt's keys and values (its buffer has room for half as many again), and the
    # hypotheses' own suffixes; the plain path holds a copy per hypothesis.
    assert model.cache.peak_bytes < plain.cache.peak_bytes / 2, (model.cache.peak_bytes, plain.cache.peak_bytes)


def test_mixed_batch_of_shared_and_unshared_rows_copies_each_past_whole_and_stays_exact(tiny):
    root = Node(PROMPT)
    other = Node(tuple(range(120, 140)))
    tiny.logits([root])
    kids = [Node((1,), root), Node((2, 3), root)]
    tiny.logits(kids)
    tiny.logits([other])
    # Rows with different prefixes (another prompt, and a row without a past): the plain layout.
    batch = [Node((4,), kids[1]), Node((5,), other), Node((6,), kids[0]), Node((7, 8, 9))]
    logits = tiny.logits(batch)
    for node, row in zip(batch, logits):
        torch.testing.assert_close(row, full_logits(tiny, tokens_of(node)), rtol=0, atol=1e-5)
        assert tiny.cache.get(node).prefix is None


def test_a_cut_of_a_shared_prefix_entry_keeps_its_prefix_and_stays_exact(tiny):
    root = Node(PROMPT)
    tiny.logits([root])
    tiny.logits([Node((1,), root)])  # appended to the root's buffers in place: a sibling cannot append
    drafts = Node((5, 6, 7, 8), root)
    tiny.logits_last([drafts], 4)
    entry = tiny.cache.get(drafts)
    assert entry.prefix is tiny.cache.get(root)
    tiny.cache.discard(drafts)
    kept = Node((5, 6), root)
    tiny.cache.put_cut(kept, entry, entry.length - 2)
    assert tiny.cache.get(kept).prefix is entry.prefix
    child = Node((9,), kept)
    torch.testing.assert_close(tiny.logits([child])[0], full_logits(tiny, PROMPT + (5, 6, 9)), rtol=0, atol=1e-5)
    # The speculative tree path copies the row's whole past (no cascade), and stays exact too.
    tree = Node((10, 11, 12), Node((9,), kept))  # the tree's root token is forwarded with it
    rows = tiny.logits_tree(tree, [-1, -1, 0])
    torch.testing.assert_close(rows[3], full_logits(tiny, PROMPT + (5, 6, 9, 10, 12)), rtol=0, atol=1e-5)


def test_a_discarded_prompt_entry_stays_counted_while_children_hold_it(tiny):
    root = Node(PROMPT)
    tiny.logits([root])
    kids = [Node((1,), root), Node((2,), root)]
    tiny.logits(kids)
    held = tiny.cache.bytes
    tiny.cache.discard(root)
    assert tiny.cache.bytes == held  # the prompt's buffers are still read by the children
    for kid in kids:
        tiny.cache.discard(kid)
    assert tiny.cache.bytes == 0
