"""JSON Schema keywords enforced by checks (grammars/json_checks.py): walking a document token by token
through the compiled constraint agrees with `jsonschema` on every drawn document, valid or not, for each
keyword; and the real model, greedy and sampled, writes documents that validate."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import searchdec as sd
from searchdec.bench.documents import shuffled


def any_order(schema, **options):
    """`sd.json_schema` with objects taking their keys in any order (property_order="any")."""
    return sd.json_schema(schema, property_order="any", **options)


SMALL = st.integers(min_value=0, max_value=9)


def in_schema_order(document: dict) -> dict:
    """The grammar still writes properties in schema order (here: alphabetical); any order is not done yet."""
    return dict(sorted(document.items()))


CASES = {
    "uniqueItems": (
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "uniqueItems": True},
        st.lists(SMALL, max_size=6),
    ),
    "uniqueItems-objects": (
        {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "number"}}}, "uniqueItems": True},
        st.lists(st.fixed_dictionaries({"x": st.sampled_from([1, 1.0, 2, 2.5])}), max_size=4),
    ),
    "not": (
        {"type": "integer", "minimum": 0, "maximum": 40, "not": {"multipleOf": 3}},
        st.integers(min_value=0, max_value=40),
    ),
    "contains": (
        {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 9},
            "contains": {"minimum": 5},
            "minContains": 2,
            "maxContains": 3,
        },
        st.lists(SMALL, max_size=7),
    ),
    "if-then-else": (
        {
            "type": "object",
            "properties": {"kind": {"enum": ["a", "b"]}, "n": {"type": "integer"}},
            "required": ["kind", "n"],
            "if": {"properties": {"kind": {"const": "a"}}},
            "then": {"properties": {"n": {"minimum": 10}}},
            "else": {"properties": {"n": {"maximum": 0}}},
        },
        st.builds(lambda kind, n: {"kind": kind, "n": n}, st.sampled_from(["a", "b"]), st.integers(-20, 20)),
    ),
    "dependentRequired": (
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}},
            "dependentRequired": {"a": ["c"]},
        },
        st.fixed_dictionaries({}, optional={"a": SMALL, "b": SMALL, "c": SMALL}).map(in_schema_order),
    ),
    "dependentSchemas": (
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "dependentSchemas": {"a": {"properties": {"b": {"minimum": 5}}, "required": ["b"]}},
        },
        st.fixed_dictionaries({}, optional={"a": SMALL, "b": SMALL}).map(in_schema_order),
    ),
    "format-date": (
        {"type": "string", "format": "date"},
        st.builds(
            lambda y, m, d: f"{y:04d}-{m:02d}-{d:02d}",
            st.integers(1900, 2100),
            st.integers(1, 12),
            st.integers(1, 31),
        ),
    ),
    "nested": (
        {
            "type": "object",
            "properties": {
                "rows": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0, "maximum": 9},
                        "uniqueItems": True,
                    },
                }
            },
            "required": ["rows"],
        },
        st.fixed_dictionaries({"rows": st.lists(st.lists(SMALL, max_size=3), max_size=3)}),
    ),
}


def in_any_order(documents):
    return st.tuples(documents, st.randoms(use_true_random=False)).map(lambda pair: shuffled(*pair))


ANY_ORDER = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "string", "maxLength": 2}, "c": {"type": "boolean"}},
    "required": ["a", "c"],
}
POINT = {
    "type": "object",
    "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
    "required": ["x", "y"],
    "additionalProperties": False,
}
CASES["any-order"] = (
    ANY_ORDER,
    in_any_order(
        st.fixed_dictionaries({}, optional={"a": SMALL, "b": st.sampled_from(["", "x", "xyz"]), "c": st.booleans()})
    ),
)
CASES["any-order-extra-keys"] = (
    ANY_ORDER,
    in_any_order(st.fixed_dictionaries({"a": SMALL, "c": st.booleans()}, optional={"d": SMALL, "e": st.just("")})),
)
CASES["any-order-ref"] = (
    {"$defs": {"point": POINT}, "type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 3},
    in_any_order(st.lists(st.fixed_dictionaries({}, optional={"x": SMALL, "y": SMALL, "z": SMALL}), max_size=3)),
)
CASES["any-order-anyOf"] = (
    {
        "anyOf": [
            {
                "type": "object",
                "properties": {"kind": {"const": "a"}, "n": {"type": "integer"}},
                "required": ["kind", "n"],
            },
            {
                "type": "object",
                "properties": {"kind": {"const": "b"}, "s": {"type": "string"}},
                "required": ["kind", "s"],
            },
        ]
    },
    in_any_order(
        st.fixed_dictionaries({}, optional={"kind": st.sampled_from(["a", "b"]), "n": SMALL, "s": st.just("s")})
    ),
)


def walked(model, constraint, document) -> bool:
    tokens = model.encode(json.dumps(document, separators=(",", ":")), add_special_tokens=False)
    try:
        return constraint.start().advance_many(tokens).accepting
    except ValueError:
        return False


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_check_agrees_with_jsonschema_on_every_document(tiny, name):
    schema, documents = CASES[name]
    constraint = any_order(schema).compile(tiny)
    validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(documents)
    def agree(document):
        assert walked(tiny, constraint, document) == validator.is_valid(document), document

    agree()


def test_a_duplicate_item_is_found_as_soon_as_it_is_complete(tiny):
    constraint = any_order(CASES["uniqueItems"][0]).compile(tiny)
    state = constraint.start().advance_many(tiny.encode("[3,4,3", add_special_tokens=False))
    assert not state.dead  # 3 may go on as 31
    assert state.advance_many(tiny.encode(",", add_special_tokens=False)).dead


def test_keywords_under_anyof_are_still_refused_by_name(tiny):
    schema = {"anyOf": [{"type": "array", "uniqueItems": True}, {"type": "string"}]}
    with pytest.raises(sd.UnsupportedKeywordError, match="uniqueItems"):
        any_order(schema).compile(tiny)


def test_schemas_without_these_keywords_compile_to_the_plain_grammar(tiny):
    constraint = any_order({"type": "array", "items": {"type": "integer"}}).compile(tiny)
    assert type(constraint).__name__ == "LLGuidanceConstraint"


@pytest.mark.integration
@pytest.mark.parametrize("name", ["uniqueItems", "not", "contains", "if-then-else", "dependentRequired", "format-date"])
def test_the_real_model_writes_valid_documents(smollm, name):
    schema = CASES[name][0]
    prompt = [{"role": "user", "content": f"Write one JSON value valid under this schema: {json.dumps(schema)}"}]
    out = sd.generate(smollm, prompt, constraint=any_order(schema), search=sd.Sample(n=2, seed=1), max_tokens=40)
    greedy = sd.generate(smollm, prompt, constraint=any_order(schema), max_tokens=40)
    for hypothesis in [*out.hypotheses, greedy]:
        if hypothesis.finish_reason == "stop":
            jsonschema.validate(json.loads(hypothesis.text), schema, format_checker=jsonschema.FormatChecker())
        else:
            assert hypothesis.finish_reason in ("length", "unsatisfied")


def test_a_key_twice_is_refused_as_soon_as_it_is_complete(tiny):
    constraint = any_order(ANY_ORDER).compile(tiny)
    state = constraint.start().advance_many(tiny.encode('{"a":1,"c":true,"a', add_special_tokens=False))
    assert not state.dead  # "a" may go on as "ab"
    assert state.advance_many(tiny.encode('"', add_special_tokens=False)).dead


def test_an_object_cannot_close_while_a_required_key_is_missing(tiny):
    constraint = any_order(ANY_ORDER).compile(tiny)
    brace = tiny.encode("}", add_special_tokens=False)[0]
    state = constraint.start().advance_many(tiny.encode('{"c":false,"b":"x"', add_special_tokens=False))
    assert not state.allows(brace) and not state.allowed_tokens(constraint.vocab_size)[brace]
    state = state.advance_many(tiny.encode(',"a":7', add_special_tokens=False))
    assert state.allows(brace) and state.allowed_tokens(constraint.vocab_size)[brace]
    assert state.advance(brace).accepting


def test_strict_mode_still_refuses_extra_keys_in_any_order(tiny):
    constraint = any_order(ANY_ORDER, strict=True).compile(tiny)
    assert walked(tiny, constraint, {"c": True, "a": 1})
    assert not walked(tiny, constraint, {"c": True, "d": 0, "a": 1})


def test_a_required_key_no_schema_admits_stays_a_compile_error(tiny):
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["b"],
        "additionalProperties": False,
    }
    with pytest.raises(sd.ConstraintError):
        any_order(schema).compile(tiny)


@pytest.mark.parametrize(
    ("schema", "pointer"),
    [
        ({"type": "object", "properties": {"x": False, "a": {}}, "required": ["x"]}, "#/required"),
        (
            {
                "type": "object",
                "properties": {"a": {}},
                "patternProperties": {"^y": {}},
                "required": ["x"],
                "additionalProperties": False,
            },
            "#/required",
        ),
        (
            {
                "type": "object",
                "properties": {"o": {"type": "object", "properties": {"a": {}, "x": {"enum": []}}, "required": ["x"]}},
                "required": ["o"],
            },
            "#/required",  # llguidance names the outer key: an object that needs "o" and can never hold it
        ),
        (
            {
                "type": "object",
                "properties": {"a": {}, "b": {}},
                "required": ["x"],
                "additionalProperties": False,
                "patternProperties": {"^x$": False},
            },
            "#/required",
        ),
    ],
)
def test_a_required_key_no_schema_admits_is_refused_in_any_order_too(tiny, schema, pointer):
    """As llguidance refuses it in schema order (an optional object holding one is dropped instead)."""
    with pytest.raises(sd.EmptyLanguageError, match=f"required property '[xo]' is unsatisfiable .*at {pointer}"):
        any_order(schema).compile(tiny)


@pytest.mark.parametrize("search", [sd.Greedy(), sd.Sample(n=3, seed=0)], ids=["greedy", "sample"])
def test_a_budgeted_output_in_any_order_holds_every_required_key(tiny, search):
    """The closing walk writes a missing required key where the grammar alone would close the object."""
    spec = any_order(ANY_ORDER)
    floor = spec.compile(tiny).start().closing(10_000)[0]
    for max_tokens in (floor, floor + 6):
        out = sd.generate(tiny, "x", max_tokens=max_tokens, constraint=spec, search=search)
        for hypothesis in out.hypotheses:
            assert hypothesis.finish_reason == "stop", (max_tokens, hypothesis.text)
            jsonschema.validate(json.loads(hypothesis.text), ANY_ORDER)


def test_property_order_schema_keeps_the_grammar_alone(tiny):
    document = {"c": True, "a": 1}
    assert walked(tiny, any_order(ANY_ORDER).compile(tiny), document)
    constraint = sd.json_schema(ANY_ORDER, property_order="schema").compile(tiny)
    assert type(constraint).__name__ == "LLGuidanceConstraint"
    assert not walked(tiny, constraint, document) and walked(tiny, constraint, {"a": 1, "c": True})
    with pytest.raises(sd.ConstraintError, match="property_order"):
        sd.json_schema(ANY_ORDER, property_order="sorted")


def test_a_required_beside_object_branches_takes_them_in_any_order(tiny):
    """`required` next to `anyOf` object branches (JSONSchemaBench's Skaffold artifacts) goes into each branch."""
    branch = {"type": "object", "properties": {"image": {"type": "string"}, "sync": {"type": "integer"}}}
    schema = {"required": ["image"], "anyOf": [{**branch, "additionalProperties": False}, {"type": "string"}]}
    constraint = any_order(schema).compile(tiny)
    assert walked(tiny, constraint, {"sync": 1, "image": "x"}) and walked(tiny, constraint, "s")
    assert not walked(tiny, constraint, {"sync": 1})
