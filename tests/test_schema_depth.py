"""A JSON Schema nested deeper than the grammar engines read is a SchemaError naming the depth limit
and where the schema passes it, raised when the spec is made (not a bare RecursionError from the
schema check, nor llguidance's "recursion limit exceeded"), in a script and over HTTP (a 400)."""

import pytest

import searchdec as sd
from searchdec.grammars.specs import MAX_SCHEMA_DEPTH


def nested_objects(levels: int) -> dict:
    """An object holding an object ... `levels` deep; its JSON nests 2 * levels + 1 levels."""
    schema = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def nested_arrays(depth: int) -> dict:
    """Arrays of arrays: JSON nesting exactly `depth`."""
    schema = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"type": "array", "items": schema}
    return schema


def test_a_200_level_schema_is_a_schema_error_naming_the_limit():
    with pytest.raises(sd.SchemaError, match=f"more than {MAX_SCHEMA_DEPTH} levels deep") as error:
        sd.json_schema(nested_objects(200))  # refused when made: no model, no compile
    assert error.value.pointer.startswith("/properties/a/properties/a/")


def test_the_limit_is_exactly_what_the_engine_compiles(tiny):
    sd.json_schema(nested_arrays(MAX_SCHEMA_DEPTH)).compile(tiny).start()
    with pytest.raises(sd.SchemaError, match="levels deep"):
        sd.json_schema(nested_arrays(MAX_SCHEMA_DEPTH + 1))


def test_the_outlines_core_backend_gets_the_same_error():
    with pytest.raises(sd.SchemaError, match="levels deep"):
        sd.json_schema(nested_objects(200), backend="outlines-core")


def test_schema_text_nested_past_pythons_own_parser_is_a_schema_error():
    text = '{"items":' * 5000 + "{}" + "}" * 5000
    with pytest.raises(sd.SchemaError, match="levels"):
        sd.json_schema(text)


def test_the_server_answers_a_deep_response_format_with_a_400():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from tiny import tiny_model

    from searchdec.server import create_app

    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "response_format": {"type": "json_schema", "json_schema": {"name": "deep", "schema": nested_objects(200)}},
    }
    with TestClient(create_app(tiny_model(), "tiny")) as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_schema" and error["param"] == "response_format.json_schema.schema"
    assert f"more than {MAX_SCHEMA_DEPTH} levels deep" in error["message"]
