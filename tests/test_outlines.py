"""The outlines side: the outlines-core backend (regex, choice, JSON Schema as a token DFA) behaves
like the default backend where both apply, and `outlines.types` objects are taken unchanged."""

import json
import re

import jsonschema
import pytest

import searchdec as sd

pytest.importorskip("outlines_core")
outlines_types = pytest.importorskip("outlines.types")

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.mark.parametrize("search", [sd.Greedy(), sd.Sample(n=4, seed=0)], ids=["greedy", "sample"])
def test_outlines_core_regex_outputs_match(tiny, search):
    spec = sd.regex(r"[A-Z]{3}-[0-9]{2,4}", backend="outlines-core")
    out = sd.generate(tiny, "x", max_tokens=12, constraint=spec, search=search)
    for h in out.hypotheses:
        assert h.finish_reason == "stop"
        assert re.fullmatch(r"[A-Z]{3}-[0-9]{2,4}", h.text), h.text


def test_outlines_core_json_schema_outputs_validate_within_the_budget(tiny):
    spec = sd.json_schema(PERSON, backend="outlines-core")
    out = sd.generate(tiny, "x", max_tokens=40, constraint=spec, search=sd.Sample(n=4, seed=2))
    for h in out.hypotheses:
        assert h.finish_reason == "stop", h.text
        jsonschema.validate(json.loads(h.text), PERSON)


def test_both_backends_allow_the_same_tokens_along_a_document(tiny):
    text = '{"name":"Ann","age":42}'
    default = sd.json_schema(PERSON, max_whitespace=0).compile(tiny).start()
    outlines = sd.json_schema(PERSON, max_whitespace=0, backend="outlines-core").compile(tiny).start()
    vocab = tiny.vocab_size
    for token in tiny.encode(text, add_special_tokens=False):
        a, b = default.allowed_tokens(vocab), _allowed(outlines, vocab)
        assert bool(a[token]) and bool(b[token])
        default, outlines = default.advance(token), outlines.advance(token)
    assert default.accepting and outlines.accepting


def _allowed(state, vocab):
    from searchdec.grammars.base import allocate_bitmask, unpack_bitmask

    bitmask = allocate_bitmask(1, vocab)
    state.fill(bitmask)
    return unpack_bitmask(bitmask, vocab)[0]


def test_outlines_state_forks_and_rolls_back(tiny):
    state = sd.choice(["cat", "cow"], backend="outlines-core").compile(tiny).start()
    c = state.advance(tiny.encode("c", add_special_tokens=False)[0])
    ca = c.advance(tiny.encode("a", add_special_tokens=False)[0])
    assert c.allows(tiny.encode("o", add_special_tokens=False)[0])
    assert not ca.allows(tiny.encode("o", add_special_tokens=False)[0])
    assert ca.rollback(1).allows(tiny.encode("o", add_special_tokens=False)[0])
    assert state.closing(10) == (4, state.closing(10)[1])  # three letters, then end-of-sequence


def test_outlines_core_errors_are_named_before_indexing(tiny):
    with pytest.raises(sd.EmptyLanguageError):
        sd.regex(r"[^\s\S]", backend="outlines-core").compile(tiny)
    with pytest.raises(sd.GrammarSyntaxError):
        sd.regex(r"a(b", backend="outlines-core").compile(tiny)
    with pytest.raises(sd.ConstraintError, match="regular languages only"):
        sd.grammars.backend_named("outlines-core").check(sd.lark('start: "a"'))
    with pytest.raises(sd.ConstraintError, match="unknown grammar backend"):
        sd.regex("a", backend="xgrammar")
    with pytest.raises(sd.ConstraintError, match="strict"):
        sd.json_schema(PERSON, strict=True, backend="outlines-core")


def test_outlines_types_are_taken_unchanged(tiny):
    t = outlines_types
    out = sd.generate(tiny, "x", max_tokens=12, constraint=t.integer, search=sd.Sample(n=3, seed=1))
    assert all(re.fullmatch(r"[+-]?(0|[1-9][0-9]*)", h.text) for h in out.hypotheses if h.finish_reason == "stop")
    out = sd.generate(tiny, "x", max_tokens=8, constraint=t.Choice(["red", "blue"]))
    assert out.text in ("red", "blue")
    out = sd.generate(tiny, "x", max_tokens=40, constraint=t.JsonSchema(PERSON), search=sd.Sample(n=2, seed=0))
    for h in out.hypotheses:
        jsonschema.validate(json.loads(h.text), PERSON)
    assert sd.from_outlines(t.CFG('start: "a" "b"')) == sd.lark('start: "a" "b"')
    sequence = sd.from_outlines(t.Regex(r"[0-9]+") + t.Regex("!"))  # outlines' DSL: to the regex outlines derives
    assert isinstance(sequence, sd.grammars.Regex)
    assert re.fullmatch(sequence.pattern, "12!") and not re.fullmatch(sequence.pattern, "12")
    with pytest.raises(sd.ConstraintError, match="whitespace_pattern"):
        sd.from_outlines(t.JsonSchema(PERSON, whitespace_pattern=" ?"))


def test_a_compiled_outlines_core_constraint_works_in_generate(tiny):
    compiled = sd.regex(r"[A-Z]{3}-[0-9]{2}", backend="outlines-core").compile(tiny)
    assert isinstance(compiled, sd.Constraint) and compiled.backend == "outlines-core"
    for search in (sd.Greedy(), sd.Beam(width=3)):
        out = sd.generate(tiny, "x", max_tokens=10, constraint=compiled, search=search)
        assert out.finish_reason == "stop" and re.fullmatch(r"[A-Z]{3}-[0-9]{2}", out.text), out.text


@pytest.mark.parametrize("compiled", [False, True], ids=["spec", "compiled"])
def test_the_hf_processor_takes_the_outlines_core_backend_with_only_a_tokenizer(tiny, compiled):
    import torch

    from searchdec.hf import GrammarLogitsProcessor

    spec = sd.regex(r"(alpha|beta)-[0-9]{2}", backend="outlines-core")
    constraint = spec.compile(tiny) if compiled else spec  # the spec compiles from the tokenizer alone
    processor = GrammarLogitsProcessor(constraint, tiny.tokenizer, vocab_size=tiny.vocab_size)
    assert processor.constraint.backend == "outlines-core"
    prompt = torch.tensor([tiny.encode("code:")])
    with torch.inference_mode():
        out = tiny.hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            num_beams=3,
            num_return_sequences=3,
            max_new_tokens=12,
            logits_processor=[processor],
            do_sample=False,
            pad_token_id=tiny.tokenizer.pad_token_id,
            eos_token_id=tiny.tokenizer.eos_token_id,
        )
    for row in out:
        text = tiny.decode(row[prompt.shape[1] :].tolist(), skip_special_tokens=True)
        assert re.fullmatch(r"(alpha|beta)-[0-9]{2}", text), text
