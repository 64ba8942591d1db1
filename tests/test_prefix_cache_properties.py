"""Property: whatever the order in which a tree is expanded and however its nodes are batched, every
node's logits equal a from-scratch forward of its sequence, and no token is forwarded twice while the
cache holds its prefix."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import tiny_model

from searchdec.search import Node

MODEL = tiny_model(seed=3)


def sequence(node):
    tokens = []
    while node is not None:
        tokens[:0] = node.new_tokens
        node = node.parent
    return tokens


@st.composite
def expansion_plans(draw):
    """A sequence of batches; each batch names existing nodes (by index) to extend with new tokens."""
    n_roots = draw(st.integers(1, 3))
    roots = [draw(st.lists(st.integers(3, 200), min_size=1, max_size=12)) for _ in range(n_roots)]
    batches = []
    n_nodes = n_roots
    for _ in range(draw(st.integers(1, 6))):
        size = draw(st.integers(1, 4))
        batch = []
        for _ in range(size):
            parent = draw(st.integers(0, n_nodes - 1))
            tokens = draw(st.lists(st.integers(3, 200), min_size=1, max_size=3))
            batch.append((parent, tokens))
        n_nodes += size
        batches.append(batch)
    return roots, batches


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expansion_plans())
def test_any_expansion_order_gives_full_recompute_logits_and_forwards_nothing_twice(plan):
    roots, batches = plan
    MODEL.cache.clear()
    nodes = [Node(tuple(r)) for r in roots]
    MODEL.logits(nodes)
    for batch in batches:
        children = [Node(tuple(tokens), nodes[parent]) for parent, tokens in batch]
        expected_new = sum(len(tokens) for _, tokens in batch)  # every parent was forwarded before
        before = MODEL.stats.tokens
        logits = MODEL.logits(children)
        assert MODEL.stats.tokens - before == expected_new
        with torch.inference_mode():
            for child, row in zip(children, logits):
                full = MODEL.hf(torch.tensor([sequence(child)])).logits[0, -1]
                torch.testing.assert_close(row, full, rtol=1e-4, atol=1e-4)
        nodes.extend(children)
