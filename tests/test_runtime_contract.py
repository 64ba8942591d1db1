"""The model-runtime contract (models/base.py): the transformers runtime implements every member, and
what the contract promises holds — logits through the cache equal a full recompute, and a child's
forward feeds only its new tokens."""

import torch

from searchdec.models.base import Runtime
from searchdec.search.tree import Node


def test_the_transformers_runtime_implements_the_contract(tiny):
    assert isinstance(tiny, Runtime) and not getattr(type(tiny), "__abstractmethods__", None)


def test_logits_through_the_cache_equal_a_full_recompute_and_forward_only_new_tokens(tiny):
    root = Node((5, 6, 7, 8))
    tiny.logits([root])
    before = tiny.stats.tokens
    child = root.child((9, 10), (0.0, 0.0))
    cached = tiny.logits([child])[0]
    assert tiny.stats.tokens - before == 2
    fresh = Node((5, 6, 7, 8, 9, 10))
    torch.testing.assert_close(cached, tiny.logits([fresh])[0], rtol=1e-4, atol=1e-4)
    for node in (root, child, fresh):
        tiny.cache.discard(node)
