"""The GGUF-native runtime (`sd.load(..., runtime="llama.cpp")`, models/llamacpp.py) on the default
model's packaged GGUF: greedy equals llama.cpp's own greedy, a forward feeds only the tokens after the
nearest cached ancestor and equals a full recompute, a token tree's rows equal each path's, sequences
are released and evicted, and constraints, beams and speculative decoding run on it unchanged.

The whole module is skipped where llama-cpp-python is not installed: PyPI has no Linux wheel, and
building llama.cpp from source takes 45-85 minutes on 2 cores, more than CI's budget (see .ci/run).
The contract suites run on this runtime too (the `runtime` fixture of tests/conftest.py)."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

import searchdec as sd  # noqa: E402
from searchdec.search.tree import Node  # noqa: E402

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def exact():
    """Without flash attention: cells reused in another order then sum to the same logits here."""
    return sd.load("smollm2-135m", runtime="llama.cpp", flash_attention=False)


@pytest.fixture
def model(llama_smollm):
    llama_smollm.cache.clear()
    return llama_smollm


def raw_greedy(model, prompt: list[int], n: int) -> list[int]:
    """llama.cpp's own greedy decode in a context of its own: the prompt, then one token per call."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_threads, params.n_threads_batch = 1024, model.threads, model.threads
    ctx = llama_cpp.llama_init_from_model(model._model, params)
    try:
        tokens = (llama_cpp.llama_token * len(prompt))(*prompt)
        assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, len(prompt))) == 0
        out = []
        for _ in range(n):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(model.vocab_size,))
            out.append(int(logits.argmax()))
            one = (llama_cpp.llama_token * 1)(out[-1])
            assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) == 0
        return out
    finally:
        llama_cpp.llama_free(ctx)


def test_greedy_equals_llama_cpps_own_greedy(model):
    prompt = model.apply_chat_template(CHAT)
    out = sd.generate(model, CHAT, max_tokens=16)
    assert out.tokens == raw_greedy(model, prompt, len(out.tokens)) and len(out.tokens) == 16
    assert len(model.cache) == 0


def test_a_child_forwards_only_its_new_tokens_and_equals_a_full_recompute(model):
    root = Node(tuple(model.encode("The capital of France is")))
    model.logits([root])
    before = model.stats.tokens
    left, right = root.child((12366, 314), (0.0, 0.0)), root.child((8860,), (0.0,))
    both = model.logits([left, right])
    assert model.stats.tokens - before == 3
    fresh = model.logits([Node(root.new_tokens + left.new_tokens), Node(root.new_tokens + right.new_tokens)])
    torch.testing.assert_close(both, fresh, rtol=1e-4, atol=1e-3)
    grandchild = left.child((30,), (0.0,))
    before = model.stats.tokens
    model.logits([grandchild])
    assert model.stats.tokens - before == 1


def test_logits_last_and_a_token_tree_equal_each_paths_own_forward(exact):
    model = exact
    root = Node(tuple(model.encode("Once upon a time")))
    tree = [(11, -1), (253, 0), (2057, 0), (28, -1)]  # two branches under token 0, one other first token
    node = Node(tuple(t for t, _ in tree), root)
    rows = model.logits_tree(node, [p for _, p in tree])
    paths = {0: [11], 1: [11, 253], 2: [11, 2057], 3: [28]}
    for j, path in paths.items():
        alone = model.logits([Node(root.new_tokens + tuple(path))])[0]
        torch.testing.assert_close(rows[1 + j], alone, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(rows[0], model.logits([Node(root.new_tokens)])[0], rtol=1e-4, atol=1e-3)
    kept = root.child((11, 2057), (0.0, 0.0))
    entry = model.cache.get(node)
    model.cache.put_branch(kept, entry, entry.length - len(tree), [0, 2])
    model.cache.discard(node)
    before = model.stats.tokens
    after_kept = model.logits([kept.child((13,), (0.0,))])[0]
    assert model.stats.tokens - before == 1
    fresh = model.logits([Node(root.new_tokens + (11, 2057, 13))])[0]
    torch.testing.assert_close(after_kept, fresh, rtol=1e-4, atol=1e-3)
    last = model.logits_last([Node(root.new_tokens + (11, 253))], 3)[0]
    torch.testing.assert_close(last[1], rows[1], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(last[2], rows[2], rtol=1e-4, atol=1e-3)


def test_beam_search_forwards_only_new_tokens_and_releases_its_sequences(model):
    prompt = model.encode("The three primary colours are")
    before = model.stats.tokens
    out = sd.generate(model, "The three primary colours are", max_tokens=8, search=sd.Beam(4, num_return=4))
    forwarded = model.stats.tokens - before
    assert len(prompt) < forwarded <= len(prompt) + 4 * 8 and out.stats.tokens_forwarded == forwarded
    assert len(out.hypotheses) == 4 and len(model.cache) == 0


def test_a_full_kv_cache_evicts_the_least_recently_used_sequence():
    small = sd.load("smollm2-135m", runtime="llama.cpp", context=256, threads=1)
    first = Node(tuple(small.encode("word " * 150)))
    second = Node(tuple(small.encode("other " * 150)))
    small.logits([first])
    logits = small.logits([second])[0]  # 300 cells do not fit in 256: the first sequence goes
    assert first not in small.cache and second in small.cache
    small.cache.clear()
    torch.testing.assert_close(logits, small.logits([Node(second.new_tokens)])[0], rtol=1e-4, atol=1e-3)
    with pytest.raises(sd.PromptTooLongError, match="context window"):
        sd.generate(small, "word " * 300, max_tokens=4)


def test_constrained_generation_validates_on_llama_cpp(model):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    out = sd.generate(model, "A person as JSON:", max_tokens=40, constraint=sd.json_schema(schema))
    assert out.finish_reason == "stop"
    jsonschema.validate(json.loads(out.text), schema)
    colour = sd.generate(model, CHAT, max_tokens=8, constraint=sd.regex("(Paris|Lyon|Nice)"), search=sd.Beam(3))
    assert all(h.text in ("Paris", "Lyon", "Nice") for h in colour.hypotheses)


def test_speculative_decoding_on_llama_cpp_equals_its_greedy(model):
    prompt = "Copy this: the quick brown fox jumps over the lazy dog. Copy: the quick brown"
    greedy = sd.generate(model, prompt, max_tokens=16)
    before = model.stats.calls
    fast = sd.generate(model, prompt, max_tokens=16, search=sd.Speculative(k=4))
    assert fast.tokens == greedy.tokens
    assert model.stats.calls - before < len(greedy.tokens)  # drafts were accepted: fewer target calls
    trees = sd.generate(model, prompt, max_tokens=16, search=sd.Speculative(k=4, drafts=2))
    assert trees.tokens == greedy.tokens and len(model.cache) == 0


def test_loading_names_what_the_runtime_cannot_take(tmp_path):
    with pytest.raises(ValueError, match="unknown runtime"):
        sd.load("smollm2-135m", runtime="vllm")
    with pytest.raises(ValueError, match="CPU"):
        sd.load("smollm2-135m", runtime="llama.cpp", device="cuda")
    with pytest.raises(ValueError, match="options of runtime='llama.cpp'"):
        sd.load("smollm2-135m", threads=2)
    with pytest.raises(sd.ModelNotFoundError, match="GGUF"):
        sd.load(str(tmp_path), runtime="llama.cpp")


def test_mcts_forwards_the_prompt_once_and_one_token_per_expansion(model):
    prompt = "The three primary colours are"
    before = model.stats.tokens
    out = sd.generate(
        model, prompt, max_tokens=8, search=sd.MCTS(16, reward=lambda p, o: float(len(o)), max_children=2)
    )
    assert model.stats.tokens - before == len(model.encode(prompt)) + out.stats.expansions - 1
    assert len(model.cache) == 0


def test_the_server_on_llama_cpp_enforces_response_format_through_the_openai_client(model):
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from live_server import LiveServer

    from searchdec.server import create_app

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    with LiveServer(create_app(model, "smollm2-135m")) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="smollm2-135m",
            messages=CHAT,
            max_tokens=24,
            temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), schema)
