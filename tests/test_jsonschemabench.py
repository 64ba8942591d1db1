"""JSONSchemaBench sample (tests/data/jsonschemabench), token by token through the real default
model's tokenizer: no invalid instance is ever accepted by a compiled schema, and every valid instance is
accepted, as given and with the properties of each of its objects shuffled; all the instances of a schema go
through one compiled constraint."""

import json
import random
from pathlib import Path

import pytest

import searchdec as sd
from searchdec.bench.documents import shuffled


def any_order(schema, **options):
    """`sd.json_schema` with objects taking their keys in any order (property_order="any")."""
    return sd.json_schema(schema, property_order="any", **options)


pytestmark = pytest.mark.integration

DATA = sorted((Path(__file__).parent / "data" / "jsonschemabench").glob("*.json"))

# Valid instances refused: none, walked as given and with each object's properties shuffled (objects take their
# keys in any order). Github_hard---o21076 (a word-count `pattern` ^(?:\S+\s+){0,N}\S+$ under maxLength) was,
# until the lexer got ten times llguidance's default fuel per step (llguidance_backend.LIMITS).
KNOWN_VALID_REJECTED: set[str] = set()


def accepted(model, constraint, data) -> bool:
    tokens = model.encode(json.dumps(data, ensure_ascii=False), add_special_tokens=False)
    try:
        return constraint.start().advance_many(tokens).accepting
    except ValueError:
        return False


@pytest.fixture(scope="module")
def compiled(smollm):
    out = {}
    for path in DATA:
        case = json.loads(path.read_text())
        try:
            out[path.name] = (any_order(case["schema"]).compile(smollm), case["tests"])
        except (sd.UnsupportedKeywordError, sd.SchemaError):
            pass  # refused with a named cause: coverage, not correctness
    return out


def test_most_of_the_sample_compiles(compiled):
    assert len(compiled) >= 0.75 * len(DATA)


def test_no_invalid_instance_is_accepted(smollm, compiled):
    wrongly_accepted = [
        name
        for name, (constraint, tests) in compiled.items()
        for case in tests
        if not case["valid"] and accepted(smollm, constraint, case["data"])
    ]
    assert wrongly_accepted == []


def test_valid_instances_are_accepted(smollm, compiled):
    rejected = {
        name
        for name, (constraint, tests) in compiled.items()
        for case in tests
        if case["valid"] and not accepted(smollm, constraint, case["data"])
    }
    assert rejected == KNOWN_VALID_REJECTED


def test_valid_instances_are_accepted_with_their_properties_shuffled(smollm, compiled):
    rng = random.Random(0)
    rejected = {
        name
        for name, (constraint, tests) in compiled.items()
        for case in tests
        for _ in range(3)
        if case["valid"] and not accepted(smollm, constraint, shuffled(case["data"], rng))
    }
    assert rejected == set()


def test_a_word_count_pattern_walks_many_documents_through_one_constraint_after_a_mask(smollm):
    # The default lexer fuel ran out on such a string once the first mask had been computed, and the
    # shared lexer then refused every later document of the cached constraint.
    words = {"type": "string", "maxLength": 300, "pattern": "^(?:\\S+\\s+){0,29}\\S+$"}
    constraint = any_order({"type": "array", "items": words}).compile(smollm)
    constraint.start().allowed_tokens(constraint.vocab_size)
    assert not accepted(smollm, constraint, [" a leading space"])
    documents = [["Experience working in agile teams delivering digital services"], ["Ability to work in a team"]]
    assert all(accepted(smollm, constraint, document) for document in documents * 3)
    assert not accepted(smollm, constraint, [" a leading space"])
