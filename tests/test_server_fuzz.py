"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis): whatever a request holds, the
server answers it (no 5xx, no dropped connection) within a bounded time. A tiny random model serves
(the HTTP layer is what is under test), and requests that give no max_tokens stop at 8 tokens."""

from __future__ import annotations

import collections
import os

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from live_server import LiveServer  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from tiny import tiny_model  # noqa: E402

# Per operation and generation mode; a longer run: SEARCHDEC_FUZZ_EXAMPLES=1000 pytest tests/test_server_fuzz.py -s
EXAMPLES = int(os.environ.get("SEARCHDEC_FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def fuzzed_server():
    from searchdec.server import create_app

    with LiveServer(create_app(tiny_model(), "tiny", default_max_tokens=8)) as live:
        yield live


def test_no_request_gets_a_server_error_or_hangs(fuzzed_server):
    schema = schemathesis.openapi.from_url(fuzzed_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/chat/completions", "POST /v1/completions"}
    seen = []
    runs = [
        (op, mode) for op in operations for mode in GenerationMode if op.method.upper() == "POST" or mode == "positive"
    ]
    for operation, mode in runs:  # valid bodies, and invalid ones

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def answered(case):
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny"  # past the model check, into everything else (a wrong name is a 404)
            response = case.call(base_url=fuzzed_server.url, timeout=60)
            seen.append(response.status_code)
            assert response.status_code < 500, (response.status_code, response.text[:500], case.body)
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}, response.text

        answered()
    counts = collections.Counter(seen)
    print("fuzzed statuses:", dict(counts))
    assert counts[200] and counts[400]  # both accepted and refused requests were generated


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-6])
def test_a_temperature_next_to_zero_decodes_greedily(fuzzed_server, temperature):
    """Found by the fuzzer: logits / 1e-300 overflow to inf, and sampling from them failed (a 500)."""
    import httpx

    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    greedy = httpx.post(fuzzed_server.url + "/v1/chat/completions", json={**body, "temperature": 0}, timeout=60)
    tiny_t = httpx.post(
        fuzzed_server.url + "/v1/chat/completions", json={**body, "temperature": temperature}, timeout=60
    )
    assert tiny_t.status_code == 200
    assert tiny_t.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]


def test_search_parameters_never_get_a_server_error(fuzzed_server):
    """The `search` extension is an open object in the OpenAPI schema, so schemathesis rarely names a
    real algorithm: here every registered algorithm gets its own parameters with arbitrary JSON values."""
    import httpx
    from hypothesis import strategies as st

    from searchdec.server.searches import REGISTRY

    numbers = st.integers(-3, 70) | st.floats(allow_nan=False, allow_infinity=False)  # JSON has no NaN
    values = st.none() | st.booleans() | numbers | st.text(max_size=8)
    values = values | st.sampled_from(["never", "max", "weighted", "majority", "logprob", "self_eval", "none"])

    @st.composite
    def searches(draw):
        entry = draw(st.sampled_from(sorted(REGISTRY.values(), key=lambda e: e.name)))
        keys = draw(st.lists(st.sampled_from([*entry.params, "bogus"]), unique=True, max_size=4))
        return {"algorithm": entry.name, **{key: draw(values) for key in keys}}

    @settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(search=searches(), n=st.integers(1, 3), schema=st.booleans())
    def answered(search, n, schema):
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "n": n,
                "search": search}  # fmt: skip
        if schema:
            body["response_format"] = {"type": "json_object"}
        response = httpx.post(fuzzed_server.url + "/v1/chat/completions", json=body, timeout=60)
        assert response.status_code < 500, (response.text[:500], body)
        if response.status_code == 200:
            assert len(response.json()["choices"]) == n
        else:
            assert response.json()["error"]["param"].split(".")[0] == "search", (response.text, body)

    answered()


def _schemas():
    from hypothesis import strategies as st

    leaves = st.one_of(
        st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 6)),
        st.builds(
            lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
            st.integers(-50, 50),
            st.integers(0, 100),
        ),  # fmt: skip
        st.just({"type": "boolean"}),
        st.builds(
            lambda values: {"enum": values},
            st.lists(st.text("abc", min_size=1, max_size=3), min_size=1, max_size=3, unique=True),
        ),  # fmt: skip
        st.builds(lambda n: {"type": "array", "items": {"type": "integer"}, "maxItems": n}, st.integers(0, 3)),
    )

    def objects(children):
        return st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), children, min_size=1, max_size=3).flatmap(
            lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
                lambda required: {
                    "type": "object",
                    "properties": props,
                    "required": required,
                    "additionalProperties": False,
                }  # fmt: skip
            )
        )

    return st.recursive(leaves, objects, max_leaves=5).filter(lambda s: s.get("type") == "object")


@pytest.fixture(scope="module")
def wide_server():
    """A tiny model with room for the tool listing the server writes into the system message."""
    from searchdec.server import create_app

    with LiveServer(create_app(tiny_model(max_positions=2048), "tiny")) as live:
        yield live


def test_every_returned_json_schema_output_and_tool_call_validates(wide_server):
    """The acceptance rule, for all schemas: whatever the sampled model writes, an output returned as
    finished under response_format validates against its schema, and every returned tool call's
    arguments validate against its tool's parameters."""
    import json

    import httpx
    import jsonschema
    from hypothesis import strategies as st

    counts = collections.Counter()

    @settings(max_examples=max(EXAMPLES // 2, 10), deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    @given(schema=_schemas(), seed=st.integers(0, 1000), tools=st.booleans())
    def validates(schema, seed, tools):
        body = {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 120, "n": 4,
                "temperature": 1.5, "seed": seed}  # fmt: skip
        if tools:
            tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
            body.update(tools=[tool], tool_choice="required")
        else:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
        response = httpx.post(wide_server.url + "/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        for choice in response.json()["choices"]:
            counts[choice["finish_reason"]] += 1
            message = choice["message"]
            if choice["finish_reason"] == "tool_calls":
                for call in message["tool_calls"]:
                    assert call["function"]["name"] == "f"
                    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)
            elif choice["finish_reason"] == "stop":
                assert not tools, message  # tool_choice required: a finished output is calls
                jsonschema.validate(json.loads(message["content"]), schema)

    validates()
    print("finish reasons:", dict(counts))
    assert counts["stop"] + counts["tool_calls"] > counts["length"]
