"""Objects spread over several schemas (grammars/json_flatten.py) taken in any key order: `allOf` members, `$ref`'d
members, object keywords beside `anyOf`/`oneOf` branches, a recursive `$ref: "#"` branch, an object-valued
`enum`/`const` and a property a pattern already covers (the shapes of the JSONSchemaBench schemas whose shuffled
valid instances were refused). Each walks documents token by token through the compiled constraint, as written and
with their keys shuffled, and agrees with `jsonschema` on every one: the valid ones accepted, and a missing required
key, a key twice, a wrong type in a moved member refused."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import searchdec as sd
from searchdec.bench.documents import shuffled
from searchdec.grammars import json_checks, json_flatten

ALL_OF = {
    "type": "object",
    "allOf": [
        {
            "properties": {"kind": {"enum": ["op"]}, "id": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["kind", "id"],
        }
    ],
}
ALL_OF_REFS = {
    "$defs": {
        "base": {"properties": {"id": {"type": "string"}, "n": {"type": "integer"}}, "required": ["id"]},
        "more": {"properties": {"tag": {"type": "boolean"}, "n": {"minimum": 0}}, "required": ["tag"]},
    },
    "type": "object",
    "allOf": [{"$ref": "#/$defs/base"}, {"$ref": "#/$defs/more"}],
}
BESIDE_ANY_OF = {
    "type": "object",
    "properties": {"a": {"type": "boolean"}, "b": {"type": "integer"}, "c": {"type": "integer"}},
    "additionalProperties": False,
    "required": ["a"],
    "anyOf": [{"required": ["b"]}, {"required": ["c"]}],
}
BESIDE_ONE_OF = {
    "type": "object",
    "properties": {"kind": {"type": "string"}},
    "required": ["kind"],
    "oneOf": [
        {"properties": {"kind": {"const": "phone"}, "brand": {"type": "string"}, "screen": {"type": "integer"}}},
        {"properties": {"kind": {"const": "laptop"}, "brand": {"type": "string"}, "ram": {"type": "integer"}}},
    ],
}
ONE_OF_REFS_IN_ALL_OF = {
    "definitions": {
        "base": {"properties": {"type": {"type": "string"}, "name": {"type": "string"}}},
        "sql": {"properties": {"type": {"enum": ["sql"]}, "props": {"type": "integer"}}, "required": ["props"]},
        "blob": {"properties": {"type": {"enum": ["blob"]}, "props": {"type": "string"}}},
    },
    "type": "object",
    "required": ["type", "name"],
    "allOf": [
        {"$ref": "#/definitions/base"},
        {"oneOf": [{"$ref": "#/definitions/sql"}, {"$ref": "#/definitions/blob"}]},
    ],
}
RECURSIVE = {
    "definitions": {
        "element": {
            "type": "object",
            "additionalProperties": {},
            "anyOf": [{"$ref": "#"}, {"$ref": "#/definitions/text"}],
        },
        "text": {
            "type": "object",
            "properties": {"type": {"enum": ["text"]}, "content": {"type": "string"}},
            "required": ["type"],
            "additionalProperties": False,
        },
    },
    "type": "object",
    "properties": {
        "type": {"enum": ["list"]},
        "id": {"type": "string"},
        "items": {"type": "array", "items": {"$ref": "#/definitions/element"}, "maxItems": 3},
    },
    "required": ["type"],
    "additionalProperties": False,
}
OBJECT_ENUM = {
    "allOf": [
        {"enum": [{"bar": 2, "foo": 1, "quux": True}, {"bar": 3, "foo": {"x": 1, "y": 2}}, "plain"]},
        {"not": {"type": "object", "required": ["zzz"]}},
    ]
}
DICTIONARY = {
    "$defs": {
        "dictionary": {
            "patternProperties": {".*": {"type": "string"}},
            "properties": {"basic": {"type": "string"}},
            "required": ["basic"],
        }
    },
    "$ref": "#/$defs/dictionary",
}

# name: (schema, valid documents, invalid documents)
CASES = {
    "allOf-member": (
        ALL_OF,
        [{"kind": "op", "id": "x", "n": 3}, {"id": "y", "kind": "op"}, {"n": 1, "id": "z", "kind": "op", "more": 1}],
        [{"n": 3, "id": "x"}, {"id": "x", "kind": "op", "n": "3"}, {"kind": "no", "id": "x"}],
    ),
    "allOf-refs": (
        ALL_OF_REFS,
        [{"id": "a", "n": 2, "tag": True}, {"tag": False, "id": "b"}, {"n": 0, "tag": True, "id": "c"}],
        [{"tag": True, "n": 2}, {"id": "a", "n": 2}, {"tag": True, "id": "a", "n": -1}, {"tag": 1, "id": "a"}],
    ),
    "beside-anyOf": (
        BESIDE_ANY_OF,
        [{"a": True, "b": 1}, {"c": 2, "a": False}, {"c": 2, "b": 1, "a": True}],
        [{"a": True}, {"b": 1, "c": 2}, {"a": True, "b": 1, "d": 0}, {"b": "1", "a": True}],
    ),
    "beside-oneOf": (
        BESIDE_ONE_OF,
        [{"kind": "laptop", "brand": "x", "ram": 16}, {"screen": 6, "brand": "y", "kind": "phone"}],
        [{"brand": "x", "ram": 16}, {"kind": "tablet", "brand": "x"}, {"ram": "16", "kind": "laptop"}],
    ),
    "oneOf-refs-in-allOf": (
        ONE_OF_REFS_IN_ALL_OF,
        [{"name": "n", "props": 3, "type": "sql"}, {"props": "p", "type": "blob", "name": "m"}],
        [{"name": "n", "type": "sql"}, {"props": "p", "type": "sql", "name": "n"}, {"props": 1, "type": "blob"}],
    ),
    "recursive-ref": (
        RECURSIVE,
        [
            {"items": [{"content": "c", "type": "text"}], "id": "1", "type": "list"},
            {"type": "list", "items": [{"items": [], "type": "list", "id": "2"}, {"type": "text"}]},
        ],
        [{"items": [{"content": "c"}], "type": "list"}, {"type": "list", "items": [{"type": "list", "x": 1}]}],
    ),
    "object-enum": (
        OBJECT_ENUM,
        [{"quux": True, "foo": 1, "bar": 2}, {"foo": {"y": 2, "x": 1}, "bar": 3}, "plain"],
        [{"quux": True, "foo": 1}, {"quux": True, "foo": 1, "bar": 2, "zzz": 0}, {"foo": {"x": 1}, "bar": 3}, "other"],
    ),
    "pattern-covers-property": (
        DICTIONARY,
        [{"basic": "b", "more": "m"}, {"x": "", "basic": "b", "y": "y"}],
        [{"more": "m"}, {"basic": 1, "more": "m"}, {"more": "m", "basic": "b", "z": 3}],
    ),
}


def walked(model, constraint, document) -> bool:
    tokens = model.encode(json.dumps(document), add_special_tokens=False)
    try:
        return constraint.start().advance_many(tokens).accepting
    except ValueError:
        return False


@pytest.mark.parametrize("name", sorted(CASES))
def test_documents_walk_as_jsonschema_says_in_any_key_order(tiny, name):
    schema, valid, invalid = CASES[name]
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert all(validator.is_valid(document) for document in valid)
    assert not any(validator.is_valid(document) for document in invalid)
    constraint = sd.json_schema(schema, property_order="any").compile(tiny)
    rng = random.Random(0)
    for document in valid + invalid:
        for moved in [document] + [shuffled(document, rng) for _ in range(3)]:
            assert walked(tiny, constraint, moved) == validator.is_valid(moved), moved


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_flattened_objects_take_their_keys_in_any_order(name):
    """No object of these schemas is left to llguidance's merge (which would keep it in schema order)."""
    schema = CASES[name][0]
    grammar, check = json_checks.split(schema, any_order=True)
    assert check is not None
    flat = json_flatten.flatten(schema)
    assert all("allOf" not in node for node in json_checks._every_schema(flat))
    assert not any(
        key in node and ("anyOf" in node or "oneOf" in node)
        for node in json_checks._every_schema(flat)
        for key in json_flatten.OBJECT
    )


def test_a_key_twice_in_a_merged_object_is_refused(tiny):
    constraint = sd.json_schema(ALL_OF_REFS, property_order="any").compile(tiny)
    state = constraint.start().advance_many(tiny.encode('{"tag":true,"id":"a","tag"', add_special_tokens=False))
    assert state.dead


def test_the_merge_is_the_conjunction_of_both_objects():
    a = {"properties": {"x": {"type": "integer"}}, "additionalProperties": False, "required": ["x"]}
    b = {"properties": {"x": {"minimum": 0}, "y": {"type": "string"}}, "required": ["y"], "title": "b"}
    assert json_flatten.merge(a, b) == {
        "title": "b",
        "properties": {"x": {"allOf": [{"type": "integer"}, {"minimum": 0}]}, "y": False},
        "additionalProperties": False,
        "required": ["x", "y"],
    }
    patterns = {"patternProperties": {"^p": {"type": "integer"}}, "additionalProperties": {"type": "string"}}
    merged = json_flatten.merge(patterns, {"properties": {"q": {"maxLength": 2}, "pa": {"minimum": 1}}})
    assert merged["properties"] == {"q": {"allOf": [{"type": "string"}, {"maxLength": 2}]}, "pa": {"minimum": 1}}
    assert merged["patternProperties"] == patterns["patternProperties"]
    assert json_flatten.merge({"type": ["integer", "null"]}, {"type": "number"}) == {"type": "integer"}


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"patternProperties": {"^a": {}}}, {"patternProperties": {"^b": {}}}),
        ({"patternProperties": {"^a": {}}}, {"additionalProperties": {"type": "integer"}}),
        ({"items": {"type": "integer"}}, {"items": [{"type": "integer"}], "additionalItems": False}),
        ({"minimum": 1}, {"minimum": 2}),
        ({"type": "string"}, {"type": "object"}),
        ({"properties": {}}, {"unevaluatedProperties": False}),
        ({"$id": "x"}, {"properties": {}}),
    ],
    ids=[
        "two-pattern-maps",
        "patterns-beside-additional",
        "items-forms",
        "two-minimums",
        "no-common-type",
        "unevaluated",
        "id",
    ],
)
def test_an_inexact_merge_is_not_made(a, b):
    with pytest.raises(json_flatten.Inexact):
        json_flatten.merge(a, b)


def test_what_cannot_merge_stays_as_given_and_still_refuses_invalid_documents(tiny):
    schema = {
        "type": "object",
        "allOf": [
            {"properties": {"a": {"type": "integer"}}, "patternProperties": {"^x": {"type": "integer"}}},
            {"properties": {"b": {"type": "string"}}, "patternProperties": {"^y": {"type": "string"}}},
        ],
        "required": ["a"],
    }
    assert json_flatten.flatten(schema)["allOf"] == schema["allOf"][1:]  # the first merges: one pattern map
    constraint = sd.json_schema(schema, property_order="any").compile(tiny)
    assert walked(tiny, constraint, {"a": 1, "b": "s", "x1": 2})
    assert not walked(tiny, constraint, {"a": "1", "b": "s"}) and not walked(tiny, constraint, {"b": "s"})


def test_a_node_a_ref_points_into_is_left_as_given():
    schema = {
        "type": "object",
        "properties": {"copy": {"$ref": "#/properties/main/allOf/0"}, "main": {"allOf": [{"required": ["a"]}]}},
    }
    assert json_flatten.flatten(schema) is schema


def test_a_recursive_all_of_ref_ends():
    schema = {
        "$defs": {"node": {"properties": {"next": {"allOf": [{"$ref": "#/$defs/node"}]}}, "required": ["v"]}},
        "allOf": [{"$ref": "#/$defs/node"}],
    }
    flat = json_flatten.flatten(schema)
    assert flat["required"] == ["v"] and flat["properties"]["next"] == {"allOf": [{"$ref": "#/$defs/node"}]}


POOL = [0, 3, -1, "s", "op", "text", True, None, {}, []]


def mutated(document, rng: random.Random):
    """`document` with one object (at any depth) changed: a key dropped, a key set to a value from `POOL` (a new
    key or a moved member with a wrong type), then every object's keys shuffled."""
    document = json.loads(json.dumps(document))
    objects, pending = [], [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            objects.append(value)
            pending += value.values()
        elif isinstance(value, list):
            pending += value
    if objects:
        target = rng.choice(objects)
        names = list(target) + ["zzz", "n", "kind", "type", "id"]
        name = rng.choice(names)
        if rng.random() < 0.3 and name in target:
            del target[name]
        else:
            target[name] = rng.choice(POOL)
    return shuffled(document, rng)


@pytest.mark.parametrize("name", sorted(CASES))
def test_mutated_documents_walk_as_jsonschema_says(tiny, name):
    schema, valid, invalid = CASES[name]
    validator = jsonschema.validators.validator_for(schema)(schema)
    constraint = sd.json_schema(schema, property_order="any").compile(tiny)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(valid + invalid), st.randoms(use_true_random=False))
    def agree(document, rng):
        document = mutated(document, rng)
        assert walked(tiny, constraint, document) == validator.is_valid(document), document

    agree()
