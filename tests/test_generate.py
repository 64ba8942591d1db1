"""generate() on the tiny model: stopping rules, batching, chat templates, results."""

from tiny import bias_token, tiny_model

import searchdec as sd
from searchdec.search import Node


def test_greedy_picks_the_argmax_at_every_step(tiny):
    out = sd.generate(tiny, "abc", max_tokens=8)
    prompt = tuple(tiny.encode("abc"))
    node = Node(prompt)
    for token in out.tokens:
        logits = tiny.logits([node])[0]
        assert int(logits.argmax()) == token
        node = Node((token,), node)


def test_logprobs_are_the_model_log_softmax_and_sum_to_logprob(tiny):
    out = sd.generate(tiny, "abc", max_tokens=6, search=sd.Sample(seed=3))
    node = Node(tuple(tiny.encode("abc")))
    for token, lp in zip(out.tokens, out.token_logprobs):
        expected = float(tiny.logits([node])[0].log_softmax(-1)[token])
        assert abs(lp - expected) < 1e-4
        node = Node((token,), node)
    assert abs(out.logprob - sum(out.token_logprobs)) < 1e-4


def test_eos_ends_with_stop_and_is_kept_in_tokens_not_text(tiny):
    eos = tiny.tokenizer.eos_token_id
    bias_token(tiny, eos, 1e4)
    out = sd.generate(tiny, "abc", max_tokens=10)
    assert out.tokens == [eos]
    assert out.finish_reason == "stop"
    assert out.text == ""


def test_stop_string_ends_generation_and_is_cut_from_the_text(tiny):
    full = sd.generate(tiny, "hello", max_tokens=30)
    stop = full.text[5:7]
    assert len(stop) == 2
    out = sd.generate(tiny, "hello", max_tokens=30, stop=[stop])
    assert out.finish_reason == "stop"
    assert out.text == full.text[: full.text.find(stop)]
    assert stop not in out.text


def test_length_finish_at_max_tokens(tiny):
    bias_token(tiny, tiny.tokenizer.eos_token_id, -1e4)  # EOS never wins
    out = sd.generate(tiny, "hello", max_tokens=7)
    assert out.finish_reason == "length"
    assert len(out.tokens) == 7


def test_batched_prompts_equal_one_by_one(tiny):
    prompts = ["a", "a much longer prompt than the first", "mid length", [{"role": "user", "content": "hi"}]]
    batched = sd.generate(tiny, prompts, max_tokens=20)
    assert isinstance(batched, list) and len(batched) == 4
    for prompt, out in zip(prompts, batched):
        assert out.tokens == sd.generate(tiny, prompt, max_tokens=20).tokens


def test_batched_prompts_run_in_one_forward_per_step(tiny):
    before = tiny.stats.calls
    outs = sd.generate(tiny, ["one", "two", "three"], max_tokens=10)
    assert tiny.stats.calls - before == max(len(o.tokens) for o in outs)


def test_chat_messages_go_through_the_template_with_tools(tiny):
    messages = [{"role": "user", "content": "hi"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    out = sd.generate(tiny, messages, max_tokens=1, tools=tools)
    assert out.prompt_tokens == len(tiny.encode("<user>hi\ntools:1\n<assistant>", add_special_tokens=False))


def test_decode_leaves_no_cache_entries_behind(tiny):
    sd.generate(tiny, ["one", "two"], max_tokens=12, search=sd.Sample(n=3, seed=0))
    assert len(tiny.cache) == 0 and tiny.cache.bytes == 0


def test_vocab_bytes_spell_the_decoded_text(tiny):
    tokens = tiny.encode("héllo wörld ✓")
    assert b"".join(tiny.vocab_bytes[t] for t in tokens) == "héllo wörld ✓".encode()


def test_max_tokens_none_runs_to_the_context_window():
    model = tiny_model(max_positions=48)
    bias_token(model, model.tokenizer.eos_token_id, -1e4)
    out = sd.generate(model, "abcdefgh", max_tokens=None)
    assert out.finish_reason == "length"
    assert out.prompt_tokens + len(out.tokens) == 48


def test_stop_string_spanning_several_tokens_is_found(tiny):
    full = sd.generate(tiny, "xyz", max_tokens=40)
    stop = full.text[10:16]  # six byte-level tokens
    out = sd.generate(tiny, "xyz", max_tokens=40, stop=[stop, "never-appears"])
    assert out.finish_reason == "stop"
    assert out.text == full.text[: full.text.find(stop)]
