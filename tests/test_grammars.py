"""The grammar layer: specs compile once per tokenizer, States fork and advance without touching their
parents, errors name their cause at compile time, and constrained decoding yields valid outputs."""

import json
import re

import jsonschema
import pytest
import torch
from tiny import tiny_model

import searchdec as sd
from searchdec.search import Node

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def ids(model, text):
    return model.encode(text, add_special_tokens=False)


def test_compiling_twice_returns_the_cached_constraint(tiny):
    spec = sd.regex(r"[a-z]{3}")
    assert spec.compile(tiny) is sd.regex(r"[a-z]{3}").compile(tiny)


def test_state_advance_leaves_the_parent_unchanged(tiny):
    state = sd.regex(r"ab(c|d)").compile(tiny).start()
    a = state.advance(ids(tiny, "a")[0])
    ab = a.advance(ids(tiny, "b")[0])
    assert state.allows(ids(tiny, "a")[0]) and not state.allows(ids(tiny, "b")[0])
    assert a.allows(ids(tiny, "b")[0]) and not a.allows(ids(tiny, "c")[0])
    abc = ab.advance(ids(tiny, "c")[0])
    assert abc.accepting and not ab.accepting


def test_fork_is_independent(tiny):
    state = sd.choice(["cat", "cow"]).compile(tiny).start().advance(ids(tiny, "c")[0])
    fork = state.fork()
    left = state.advance(ids(tiny, "a")[0])
    right = fork.advance(ids(tiny, "o")[0])
    assert left.allows(ids(tiny, "t")[0]) and not left.allows(ids(tiny, "w")[0])
    assert right.allows(ids(tiny, "w")[0]) and not right.allows(ids(tiny, "t")[0])


def test_rollback_returns_to_an_earlier_state(tiny):
    state = sd.regex(r"xy+z").compile(tiny).start().advance_many(ids(tiny, "xyy"))
    back = state.rollback(2)
    assert back.allows(ids(tiny, "y")[0]) and not back.allows(ids(tiny, "z")[0])


def test_forbidden_token_raises(tiny):
    state = sd.regex(r"[0-9]+").compile(tiny).start()
    with pytest.raises(ValueError, match="not allowed"):
        state.advance(ids(tiny, "a")[0])


def test_forced_tokens_are_what_the_grammar_fixes(tiny):
    state = sd.regex(r"hello [0-9]").compile(tiny).start()
    assert tiny.decode(state.forced) == "hello "


def test_mask_allows_exactly_the_valid_next_tokens(tiny):
    state = sd.regex(r"[ab]c").compile(tiny).start()
    allowed = state.allowed_tokens(tiny.vocab_size)
    assert sorted(torch.nonzero(allowed).flatten().tolist()) == sorted(ids(tiny, "a") + ids(tiny, "b"))


@pytest.mark.parametrize("seed", range(3))
def test_constrained_greedy_output_matches_the_regex(seed):
    model = tiny_model(seed=seed)
    out = sd.generate(model, "phone:", constraint=sd.regex(r"\(\d{3}\) \d{3}-\d{4}"), max_tokens=30)
    assert out.finish_reason == "stop"
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", out.text)


def test_constrained_sampling_outputs_validate_against_the_schema(tiny):
    out = sd.generate(tiny, "person:", constraint=sd.json_schema(PERSON), max_tokens=80, search=sd.Sample(n=8, seed=0))
    finished = [h for h in out.hypotheses if h.finish_reason == "stop"]
    assert finished
    for h in finished:
        jsonschema.validate(json.loads(h.text), PERSON)


def test_choice_output_is_one_of_the_options(tiny):
    options = ["red", "green", "blue"]
    outs = sd.generate(tiny, ["a", "b", "c", "d"], constraint=sd.choice(options), max_tokens=10)
    assert all(o.text in options and o.finish_reason == "stop" for o in outs)


def test_output_cut_by_max_tokens_is_reported_as_length(tiny):
    out = sd.generate(tiny, "x", constraint=sd.regex(r"[a-z]{20}"), max_tokens=5)
    assert out.finish_reason == "length"


def test_constraint_states_follow_their_own_hypotheses_in_a_batch(tiny):
    # Each row carries its own State: different prompts reach different points of the grammar.
    outs = sd.generate(tiny, ["1", "22", "333"], constraint=sd.regex(r"(yes|no)!"), max_tokens=10)
    for out in outs:
        assert out.text in ("yes!", "no!")


def test_lark_grammar_output_parses(tiny):
    grammar = 'start: expr\nexpr: NUMBER | "(" expr "+" expr ")"\nNUMBER: /[0-9]{1,3}/\n'
    out = sd.generate(tiny, "math:", constraint=sd.lark(grammar), max_tokens=40)
    assert out.finish_reason == "stop"
    assert re.fullmatch(r"[0-9()+]+", out.text)


def test_pydantic_model_class_is_a_schema(tiny):
    from pydantic import BaseModel, Field

    class Point(BaseModel):
        x: int = Field(ge=0, le=99)
        y: int = Field(ge=0, le=99)

    out = sd.generate(tiny, "point:", constraint=sd.json_schema(Point, strict=True), max_tokens=60)
    assert out.finish_reason == "stop"
    Point.model_validate_json(out.text)


def test_strict_forbids_extra_properties_and_default_allows_them(tiny):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    loose = sd.json_schema(schema).compile(tiny).start().advance_many(ids(tiny, '{"a": 1, "'))
    assert not loose.dead
    strict = sd.json_schema(schema, strict=True).compile(tiny).start().advance_many(ids(tiny, '{"a": 1'))
    assert not strict.allows(ids(tiny, ",")[0])
    assert loose.allows(ids(tiny, "b")[0])


def test_whitespace_is_bounded(tiny):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    state = sd.json_schema(schema, max_whitespace=3).compile(tiny).start()
    state = state.advance_many(ids(tiny, "{   "))
    assert not state.allows(ids(tiny, " ")[0])
    assert state.allows(ids(tiny, '"')[0])


# --- errors at compile time -----------------------------------------------------------------


def test_invalid_schema_names_its_json_pointer(tiny):
    with pytest.raises(sd.SchemaError, match=r"/properties/age/type") as info:
        sd.json_schema({"type": "object", "properties": {"age": {"type": "integr"}}}).compile(tiny)
    assert info.value.pointer == "/properties/age/type"


def test_schema_text_that_is_not_json_is_a_schema_error():
    with pytest.raises(sd.SchemaError, match="not valid JSON"):
        sd.json_schema("{not json")


# uniqueItems is enforced by a check (grammars/json_checks.py) where it applies unconditionally; inside
# one branch of an anyOf it is still refused, by name.
UNIQUE_IN_A_BRANCH = {
    "anyOf": [{"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, {"type": "string"}]
}


def test_unsupported_keyword_is_named_and_refused(tiny):
    spec = sd.json_schema(UNIQUE_IN_A_BRANCH)
    with pytest.raises(sd.UnsupportedKeywordError, match="uniqueItems") as info:
        spec.compile(tiny)
    assert info.value.keywords == ["uniqueItems"]


def test_lenient_ignores_unsupported_keywords(tiny):
    spec = sd.json_schema(UNIQUE_IN_A_BRANCH, lenient=True)
    assert spec.compile(tiny).start() is not None


def test_grammar_syntax_error_shows_the_rule_and_position(tiny):
    with pytest.raises(sd.GrammarSyntaxError, match=r'unknown name: "missing"[\s\S]*\^'):
        sd.lark('start: "a" | missing\n').compile(tiny)


def test_regex_syntax_error(tiny):
    with pytest.raises(sd.GrammarSyntaxError, match="unclosed character class"):
        sd.regex("[0-9").compile(tiny)


def test_unsatisfiable_schema_is_an_empty_language_error(tiny):
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 1}}, "required": ["a"]}
    with pytest.raises(sd.EmptyLanguageError):
        sd.json_schema(schema).compile(tiny)


def test_empty_choice_is_an_empty_language_error():
    with pytest.raises(sd.EmptyLanguageError):
        sd.choice([])


def test_constraint_errors_come_before_any_forward(tiny):
    with pytest.raises(sd.UnsupportedKeywordError):
        sd.generate(tiny, "x", constraint=sd.json_schema({"anyOf": [{"not": {"type": "string"}}, {"type": "null"}]}))
    assert tiny.stats.calls == 0


def test_wrong_constraint_type_is_a_type_error(tiny):
    with pytest.raises(TypeError, match="constraint must be"):
        sd.generate(tiny, "x", constraint={"type": "object"})


def test_masked_decode_never_picks_a_forbidden_token(tiny):
    constraint = sd.regex(r"[a-c]{6}").compile(tiny)
    out = sd.generate(tiny, "abc", constraint=constraint, max_tokens=10)
    node = Node(tuple(tiny.encode("abc")), state=constraint.start())
    for token in out.tokens:
        assert node.state.allows(token)
        node = node.child((token,), (0.0,))


# --- jump-forward -----------------------------------------------------------------------------


def teacher_forced_logprobs(model, prompt_tokens, tokens):
    with torch.inference_mode():
        logits = model.hf(torch.tensor([prompt_tokens + tokens])).logits[0].float()
    steps = logits[len(prompt_tokens) - 1 : -1].log_softmax(-1)
    return steps.gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1).tolist()


def test_forced_text_is_appended_without_forward_passes_of_its_own(tiny):
    spec = sd.regex(r"name: [a-z]{2}, id: [0-9]{2}, ok")
    before = tiny.stats.calls
    jumped = sd.generate(tiny, "x", constraint=spec, max_tokens=40)
    calls_jumped = tiny.stats.calls - before
    before = tiny.stats.calls
    stepped = sd.generate(tiny, "x", constraint=spec, max_tokens=40, jump_forward=False)
    calls_stepped = tiny.stats.calls - before
    assert re.fullmatch(r"name: [a-z]{2}, id: [0-9]{2}, ok", jumped.text)
    assert re.fullmatch(r"name: [a-z]{2}, id: [0-9]{2}, ok", stepped.text)
    # Forced runs ("name: ", ", id: ", ", ok") take no forward each; only the 4 free tokens do.
    assert calls_jumped <= 6 < calls_stepped


def test_forced_tokens_get_the_model_log_probabilities(tiny):
    out = sd.generate(tiny, "x", constraint=sd.regex(r"key=[a-z]{3};val=[0-9]{2};"), max_tokens=40)
    expected = teacher_forced_logprobs(tiny, tiny.encode("x"), out.tokens)
    assert len(out.token_logprobs) == len(out.tokens)
    assert out.token_logprobs == pytest.approx(expected, abs=1e-4)
    assert out.logprob == pytest.approx(sum(expected), abs=1e-3)


def test_forced_tokens_respect_max_tokens(tiny):
    out = sd.generate(tiny, "x", constraint=sd.regex(r"a[0-9]bcdefghijklmnop"), max_tokens=6)
    assert len(out.tokens) == 6
    assert out.finish_reason == "length"
    assert len(out.token_logprobs) == 6


def test_valid_schema_using_an_unsupported_feature_names_it(tiny):
    schema = {"oneOf": [{"type": "integer"}, {"type": "number"}]}  # overlapping: exactly-one is unenforceable
    with pytest.raises(sd.UnsupportedKeywordError, match="oneOf"):
        sd.json_schema(schema).compile(tiny)
    assert sd.json_schema(schema, lenient=True).compile(tiny) is not None


def test_unknown_format_is_named(tiny):
    with pytest.raises(sd.UnsupportedKeywordError, match="format 'byte'"):
        sd.json_schema({"type": "string", "format": "byte"}).compile(tiny)


def test_masks_apply_to_inference_tensors_of_any_batch_shape(tiny):
    from searchdec.grammars import apply_masks

    state = sd.regex(r"[ab]+").compile(tiny).start()
    allowed = state.allowed_tokens(tiny.vocab_size)
    for rows in range(1, 12):  # more shapes than torch.compile's recompile limit
        with torch.inference_mode():
            logits = torch.randn(rows, tiny.vocab_size)
        masked = apply_masks(logits, [state] * rows)
        assert torch.isinf(masked[:, ~allowed]).all() and torch.isfinite(masked[:, allowed]).all()
        assert torch.isfinite(logits).all()  # the input is left as it was


def test_a_constraint_compiled_for_another_vocabulary_is_refused_by_name(tiny):
    from searchdec.grammars import tokenizer_info

    wider = sd.regex(r"[0-9]+").compile(tokenizer_info(tiny.tokenizer, vocab_size=tiny.vocab_size + 64))
    with pytest.raises(sd.ConstraintError, match=f"vocabulary of {tiny.vocab_size + 64} tokens"):
        sd.generate(tiny, "x", max_tokens=4, constraint=wider)


def test_compiling_needs_only_tokenizer_information(tiny):
    from searchdec.grammars import tokenizer_info

    info = tokenizer_info(tiny.tokenizer, vocab_size=tiny.vocab_size)
    assert info is tokenizer_info(tiny.tokenizer, vocab_size=tiny.vocab_size)  # one per tokenizer and width
    assert info.vocab_bytes == tiny.vocab_bytes and info.eos_token_ids == tiny.eos_token_ids
    spec = sd.json_schema(PERSON)
    assert spec.compile(info) is spec.compile(info)
    with pytest.raises(TypeError, match="a model, a Hugging Face tokenizer or a TokenizerInfo"):
        spec.compile("not a tokenizer")
