"""Hostile constraints (tests/fuzz_constraints.py): a deterministic slice of the fuzzer through the real
tokenizer and the HTTP server, and one test per crash class the fuzzer found, each now a specific error
raised before the engine sees the input. The full run: `python tests/fuzz_constraints.py --count 10000`."""

from __future__ import annotations

import collections
import json

import pytest
from fuzz_constraints import SLOW_S, Cases, compile_case, post, request_case
from tiny import byte_tokenizer, tiny_model

import searchdec as sd
from searchdec.grammars.specs import MAX_REFERENCE_DEPTH, MAX_RULE_CHAIN

SLICE = 150  # cases of seed 0 (the full run uses seed 1 and 10,000)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from searchdec.server import create_app

    cases = Cases(0, db_folder=tmp_path_factory.mktemp("db"))
    databases = {"department_store": cases.databases[0]}
    with TestClient(create_app(tiny_model(), "tiny", databases=databases), raise_server_exceptions=False) as client:
        yield cases, client, databases


@pytest.mark.integration
def test_a_fuzzed_slice_compiles_or_is_refused_by_name_in_time(smollm, server):
    cases, client, databases = server
    outcomes = collections.Counter()
    failures = []
    for index in range(SLICE):
        case = cases[index]
        api, api_s = compile_case(case, smollm)
        http, http_s = request_case(case, client, "tiny", databases)
        outcomes[(case.family, api.split(":")[0])] += 1
        bad = api.startswith("crash") or api_s >= SLOW_S or http_s >= SLOW_S
        if bad or not (http == "200" or (http.startswith("400:") and http != "400:None")):
            failures.append((index, case.family, api, f"{api_s:.1f} s", http, f"{http_s:.1f} s"))
    print(dict(outcomes))
    assert failures == []
    assert {kind for _, kind in outcomes} >= {"compiled", "refused"}


# --- one test per crash class found ----------------------------------------------------------------


def ref_chain(length: int, link=lambda ref: ref) -> dict:
    defs = {f"d{i}": link({"$ref": f"#/$defs/d{i + 1}"}) for i in range(length)}
    defs[f"d{length}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


@pytest.mark.parametrize(
    "schema",
    [
        ref_chain(5000),  # bare references: llguidance overflowed its stack (a segmentation fault)
        ref_chain(1000, lambda ref: {"type": "object", "properties": {"x": ref}}),
        ref_chain(1000, lambda ref: {"allOf": [ref, {"type": "object"}]}),
    ],
    ids=["refs", "objects", "allOf"],
)
def test_a_reference_chain_past_the_bound_is_a_schema_error_not_a_crash(schema):
    with pytest.raises(sd.SchemaError, match=f"chain longer than {MAX_REFERENCE_DEPTH}"):
        sd.json_schema(schema)


def test_recursive_schemas_are_not_chains():
    node = {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}
    tree = {"$defs": {"node": node}, "$ref": "#/$defs/node"}
    sd.json_schema(tree).compile(byte_tokenizer())
    sd.json_schema(ref_chain(100)).compile(byte_tokenizer())


def test_a_lark_rule_chain_past_the_bound_is_a_grammar_error_not_a_crash():
    chain = "start: r0\n" + "".join(f'r{i}: r{i + 1} | "x"\n' for i in range(3000)) + 'r3000: "a"'
    with pytest.raises(sd.GrammarSyntaxError, match=f"chain longer than {MAX_RULE_CHAIN}"):
        sd.lark(chain)
    sd.lark("start: r0\n" + "".join(f'r{i}: r{i + 1} | "x"\n' for i in range(300)) + 'r300: "a"').compile(
        byte_tokenizer()
    )


def test_a_json_schema_inside_lark_gets_the_schema_checks():
    with pytest.raises(sd.SchemaError, match="chain longer than"):
        sd.lark("start: %json " + json.dumps(ref_chain(2000)))
    with pytest.raises(sd.SchemaError, match="levels"):
        sd.lark("start: %json " + '{"items":' * 3000 + "{}" + "}" * 3000)


def test_a_grammar_past_the_parsers_row_limit_is_refused_at_compile():
    """It compiled, and its first token then failed inside generation (a 500 over HTTP)."""
    wide = "start: " + " | ".join(f'"w{i}"' for i in range(5000))
    with pytest.raises(sd.ConstraintError, match="too large for the grammar engine's parser: .*max is 2000"):
        sd.lark(wide).compile(byte_tokenizer())


@pytest.mark.parametrize("schema", [None, 5, 2.5, [], [{}], "5", "null", '"text"', "[]"])
def test_json_that_is_not_a_schema_is_a_schema_error(schema):
    with pytest.raises(sd.SchemaError, match="an object or a boolean"):
        sd.json_schema(schema)


@pytest.mark.parametrize("schema", [{"const": "\ud800"}, '{"pattern": "\\udfff"}', {"properties": {"\ud800": {}}}])
def test_a_lone_surrogate_is_a_schema_error(schema):
    with pytest.raises(sd.SchemaError, match="lone surrogate"):
        sd.json_schema(schema)


@pytest.mark.parametrize(
    ("schema", "pointer", "message"),
    [
        ({"allOf": 3.7}, "/allOf", "allOf must be a list of schemas"),
        ({"allOf": [{"enum": [1]}, {"not": {"oneOf": "1e400"}}]}, "/allOf/1/not/oneOf", "oneOf must be a list"),
        ({"not": {"not": []}}, "/not/not", "not must be a schema"),
        ({"definitions": -3, "if": None}, "/definitions", "definitions must be an object of schemas"),
        ({"not": {"$ref": "#/definitions/x"}}, "/not", "does not point into this schema"),
        ({"contains": {}, "minContains": "x"}, "/minContains", "non-negative integer"),
        ({"type": "object", "dependentRequired": {"a": "b"}}, "/dependentRequired", "lists of property names"),
        ({"$schema": {}, "type": "object"}, "/$schema", "must be a string"),
        ({"x-guidance": 3.7}, "/x-guidance", "an object of the engine's options"),
    ],
)
def test_a_keyword_holding_the_wrong_json_type_is_a_schema_error_at_its_pointer(schema, pointer, message):
    """They reached the checks' jsonschema validation (or the engine options) and failed in generation: a 500."""
    with pytest.raises(sd.SchemaError, match=message) as error:
        sd.json_schema(schema)
    assert error.value.pointer == pointer


ENTRY = {
    "table_names_original": ["singer", "concert"],
    "column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [1, "singer_id"]],
    "column_types": ["text", "number", "text", "number"],
    "primary_keys": [1],
    "foreign_keys": [[3, 1]],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"table_names_original": "singer"}, "'table_names_original' must be a list"),
        ({"table_names_original": ["singer", 5]}, r"table_names_original\[1\]"),
        ({"table_names_original": ["singer", "a\nb"]}, r"table_names_original\[1\]"),
        ({"column_names_original": [[-1, "*"], [7, "id"]]}, r"column_names_original\[1\] names table 7"),
        ({"column_names_original": [[-1, "*"], ["0", "id"]]}, r"column_names_original\[1\] names table '0'"),
        ({"column_names_original": [[-1, "*"], [0, None]]}, r"column_names_original\[1\] must name the column"),
        ({"column_types": ["text"]}, "column_types has 1 entries for 4 columns"),
        ({"column_types": None}, "'column_types' must be a list of strings"),
        ({"primary_keys": [99]}, "primary_keys must be a list of column indexes"),
        ({"foreign_keys": [[3]]}, "foreign_keys must be a list of"),
        ({"foreign_keys": [[0, 1]]}, "names the '\\*' column"),
        ({"table_names_original": ["singer", "Singer"]}, "names 'singer' twice"),
        ({"column_names_original": [[-1, "*"], [0, "id"], [0, "ID"]]}, "names column 'id' twice in table 'singer'"),
    ],
)
def test_a_misshapen_tables_entry_is_a_constraint_error_naming_the_key(change, message):
    with pytest.raises(sd.ConstraintError, match=message):
        sd.sql(tables={**ENTRY, **change})


def test_a_tables_entry_without_types_still_builds_its_database():
    entry = {key: value for key, value in ENTRY.items() if key != "column_types"}
    assert sd.sql(tables=entry).schema


def test_the_server_answers_each_crash_class_with_a_400_naming_the_field(server):
    _, client, _ = server
    deep = {"type": "string"}
    for _ in range(2000):
        deep = {"type": "array", "items": deep}
    wide = "start: " + " | ".join(f'"w{i}"' for i in range(5000))
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", **ref_chain(1000)}}}
    requests = [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": ref_chain(5000)}}},
         "response_format.json_schema.schema"),
        ({"structured_outputs": {"grammar": wide}}, "structured_outputs.grammar"),
        ({"structured_outputs": {"json": {"const": "\ud800"}}}, "structured_outputs.json"),
        ({"tools": [tool], "tool_choice": "required"}, "tools"),
        ({"structured_outputs": {"sql": {"tables": {**ENTRY, "primary_keys": [99]}}}}, "structured_outputs.sql.tables"),
    ]  # fmt: skip
    deep_body = post(client, {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "guided_json": deep})
    assert deep_body.status_code == 400 and deep_body.json()["error"]["code"] == "invalid_json", deep_body.text
    assert "nests deeper" in deep_body.json()["error"]["message"]
    for fields, param in requests:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 1, **fields}
        response = post(client, body)
        assert response.status_code == 400, (param, response.text[:300])
        assert response.json()["error"]["param"] == param, response.text[:300]
