"""The prefix KV cache: children forward only their new tokens, and results equal full recomputes."""

import torch
from tiny import tiny_model

from searchdec.search import Node


def full_logits(model, tokens):
    """Logits after `tokens` computed from scratch by the plain transformers forward."""
    with torch.inference_mode():
        return model.hf(torch.tensor([tokens])).logits[0, -1].float()


def chain(tokens_per_node):
    node = None
    for tokens in tokens_per_node:
        node = Node(tuple(tokens), node)
    return node


def test_child_forwards_only_its_new_tokens_and_matches_full_recompute(tiny):
    root = Node(tuple(range(40, 80)))
    tiny.logits([root])
    before = tiny.stats.tokens
    child = Node((5, 6, 7), root)
    logits = tiny.logits([child])[0]
    assert tiny.stats.tokens - before == 3
    torch.testing.assert_close(logits, full_logits(tiny, list(range(40, 80)) + [5, 6, 7]), rtol=1e-4, atol=1e-4)


def test_node_expanded_long_after_its_parent_reuses_the_parent_prefix(tiny):
    root = Node(tuple(range(30, 90)))
    a = Node((1,), root)
    b = Node((2,), root)
    tiny.logits([root])
    tiny.logits([a])
    # Many unrelated forwards happen in between (other branches, other prompts).
    other = Node(tuple(range(100, 130)))
    tiny.logits([other])
    for t in range(10):
        other = Node((t,), other)
        tiny.logits([other])
    before = tiny.stats.tokens
    grandchild = Node((3, 4), a)
    late = tiny.logits([grandchild, b])
    assert tiny.stats.tokens - before == 3  # two new tokens under a, one under b
    torch.testing.assert_close(late[0], full_logits(tiny, list(range(30, 90)) + [1, 3, 4]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(late[1], full_logits(tiny, list(range(30, 90)) + [2]), rtol=1e-4, atol=1e-4)


def test_beam_reordering_gathers_rows_without_recomputing(tiny):
    roots = [Node(tuple(range(50, 60))), Node(tuple(range(60, 70))), Node(tuple(range(70, 80)))]
    tiny.logits(roots)
    before = tiny.stats.tokens
    # Beams reorder: row 2 survives twice, row 1 once, row 0 is dropped.
    children = [Node((9,), roots[2]), Node((8,), roots[2]), Node((7,), roots[1])]
    logits = tiny.logits(children)
    assert tiny.stats.tokens - before == 3
    expected = [list(range(70, 80)) + [9], list(range(70, 80)) + [8], list(range(60, 70)) + [7]]
    for row, tokens in zip(logits, expected):
        torch.testing.assert_close(row, full_logits(tiny, tokens), rtol=1e-4, atol=1e-4)


def test_batch_of_mixed_lengths_equals_each_hypothesis_alone(tiny):
    a = chain([range(40, 45), [1, 2, 3, 4, 5, 6]])
    b = chain([range(50, 70), [7]])
    c = Node(tuple(range(80, 83)))
    tiny.logits([a.parent, b.parent])
    logits = tiny.logits([a, b, c])
    expected = [list(range(40, 45)) + [1, 2, 3, 4, 5, 6], list(range(50, 70)) + [7], list(range(80, 83))]
    for row, tokens in zip(logits, expected):
        torch.testing.assert_close(row, full_logits(tiny, tokens), rtol=1e-4, atol=1e-4)
    # The compacted entry of the short-new-tokens row serves its own child correctly.
    child = Node((11,), b)
    torch.testing.assert_close(tiny.logits([child])[0], full_logits(tiny, expected[1] + [11]), rtol=1e-4, atol=1e-4)


def test_cached_node_asked_again_recomputes_only_its_last_token(tiny):
    root = Node(tuple(range(40, 60)))
    first = tiny.logits([root])[0]
    before = tiny.stats.tokens
    again = tiny.logits([root])[0]
    assert tiny.stats.tokens - before == 1
    torch.testing.assert_close(again, first, rtol=1e-4, atol=1e-4)


def test_cache_memory_is_bounded_and_evicted_nodes_recompute_from_their_nearest_ancestor():
    model = tiny_model(cache_bytes=300_000)
    prompt = list(range(40, 100))
    root = Node(tuple(prompt))
    model.logits([root])
    node, chain = root, []
    for t in range(40):
        # Two children expanded one after the other: the first appends to the parent's buffers in
        # place, the second must copy them, so memory grows with every step.
        child = Node((t % 50 + 1,), node)
        model.logits([child])
        model.logits([Node((t % 50 + 2,), node)])
        chain.append(child)
        node = child
        held_by_latest = len(model.cache) <= 2
        assert model.cache.bytes <= model.cache.max_bytes or held_by_latest
    assert model.cache.evictions > 0
    evicted = [i for i, n in enumerate(chain) if n not in model.cache]
    assert evicted
    # An evicted node's child is still right: it is recomputed from the nearest cached ancestor.
    i = evicted[0]
    tokens = prompt + [t % 50 + 1 for t in range(i + 1)]
    before = model.stats.tokens
    logits = model.logits([Node((7,), chain[i])])[0]
    assert model.stats.tokens - before > 1
    torch.testing.assert_close(logits, full_logits(model, tokens + [7]), rtol=1e-4, atol=1e-4)


def test_decoding_appends_in_place_without_new_buffers(tiny):
    root = Node(tuple(range(40, 60)))
    tiny.logits([root])
    storage = tiny.cache.get(root).block.buffers
    node = root
    for t in range(10):
        node = Node((t + 1,), node)
        tiny.logits([node])
    assert tiny.cache.get(node).block.buffers is storage


def test_sibling_expanded_after_an_in_place_append_gets_its_own_copy(tiny):
    root = Node(tuple(range(40, 60)))
    tiny.logits([root])
    first = Node((1,), root)
    tiny.logits([first])
    second = Node((2,), root)  # the root's buffers already hold `first` at this position
    tiny.logits([second])
    for node, last in ((first, 1), (second, 2)):
        torch.testing.assert_close(
            tiny.logits([Node((3,), node)])[0],
            full_logits(tiny, list(range(40, 60)) + [last, 3]),
            rtol=1e-4,
            atol=1e-4,
        )


def test_rows_of_one_padded_batch_continue_without_copies_or_recompute(tiny):
    prompts = [list(range(40, 43)), list(range(50, 70)), list(range(80, 90))]
    roots = [Node(tuple(p)) for p in prompts]
    tiny.logits(roots)
    children = [Node((5,), r) for r in roots]
    before = tiny.stats.tokens
    logits = tiny.logits(children)
    assert tiny.stats.tokens - before == 3
    for row, prompt in zip(logits, prompts):
        torch.testing.assert_close(row, full_logits(tiny, prompt + [5]), rtol=1e-4, atol=1e-4)
    # The longest row leaves the batch: the rest still read their padded rows correctly.
    grandchildren = [Node((6,), children[2]), Node((7,), children[0])]
    logits = tiny.logits(grandchildren)
    torch.testing.assert_close(logits[0], full_logits(tiny, prompts[2] + [5, 6]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[1], full_logits(tiny, prompts[0] + [5, 7]), rtol=1e-4, atol=1e-4)


def test_bfloat16_model_returns_float32_logits_equal_to_its_own_full_forward():
    model = tiny_model()
    model.hf.to(torch.bfloat16)
    root = Node(tuple(range(40, 60)))
    model.logits([root])
    logits = model.logits([Node((3, 4), root)])
    assert logits.dtype == torch.float32
    with torch.inference_mode():
        full = model.hf(torch.tensor([list(range(40, 60)) + [3, 4]])).logits[0, -1].float()
    torch.testing.assert_close(logits[0], full, rtol=2e-2, atol=2e-2)


def test_a_cut_entry_is_extended_in_place_over_the_dropped_positions(tiny):
    prompt = list(range(40, 80))
    root = Node(tuple(prompt))
    tiny.logits([root])
    drafts = Node((5, 6, 7, 8), root)  # as speculative decoding verifies four drafted tokens
    tiny.logits_last([drafts], 4)
    entry = tiny.cache.get(drafts)
    tiny.cache.discard(drafts)
    kept = Node((5, 6), root)  # two accepted, two dropped
    tiny.cache.put_cut(kept, entry, entry.length - 2)
    storage = entry.block.buffers
    child = Node((9,), kept)
    logits = tiny.logits([child])[0]
    assert tiny.cache.get(child).block.buffers is storage  # appended in place: no copy of the cache
    torch.testing.assert_close(logits, full_logits(tiny, prompt + [5, 6, 9]), rtol=1e-4, atol=1e-4)


def test_a_cut_never_rewinds_over_an_entry_still_stored(tiny):
    prompt = list(range(40, 80))
    root = Node(tuple(prompt))
    tiny.logits([root])
    longer = Node((1, 2), root)
    tiny.logits([longer])  # stays stored, covering 42 positions
    entry = tiny.cache.get(longer)
    used = entry.block.buffers.used
    kept = Node((1,), root)
    tiny.cache.put_cut(kept, entry, entry.length - 1)
    assert entry.block.buffers.used == used  # not rewound: `longer` still owns position 42
    a = tiny.logits([Node((3,), kept)])[0]
    b = tiny.logits([Node((3,), longer)])[0]
    torch.testing.assert_close(a, full_logits(tiny, prompt + [1, 3]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b, full_logits(tiny, prompt + [1, 2, 3]), rtol=1e-4, atol=1e-4)
