"""Tool-call constraints: every call names a real tool and its arguments validate; tool_choice and
parallel are honoured in both formats; bad tool lists fail before generation."""

import json

import jsonschema
import pytest

import searchdec as sd

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 99},
                "b": {"type": "integer", "minimum": 0, "maximum": 99},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def check_calls(calls):
    assert calls, "expected at least one call"
    for call in calls:
        jsonschema.validate(call["arguments"], SCHEMAS[call["name"]])


@pytest.mark.parametrize("fmt", ["hermes", "json"])
def test_required_calls_name_real_tools_with_valid_arguments(tiny, fmt):
    spec = sd.tool_calls(TOOLS, tool_choice="required", format=fmt)
    outs = sd.generate(tiny, ["call a tool", "another"], constraint=spec, max_tokens=200, search=sd.Sample(n=3, seed=1))
    finished = [h for out in outs for h in out.hypotheses if h.finish_reason == "stop"]
    assert finished
    for h in finished:
        check_calls(spec.parse(h.text))


@pytest.mark.parametrize("fmt", ["hermes", "json"])
def test_not_parallel_means_exactly_one_call(tiny, fmt):
    spec = sd.tool_calls(TOOLS, tool_choice="required", parallel=False, format=fmt)
    out = sd.generate(tiny, "x", constraint=spec, max_tokens=200, search=sd.Sample(n=4, seed=2))
    for h in out.hypotheses:
        if h.finish_reason == "stop":
            assert len(spec.parse(h.text)) == 1


def test_named_tool_choice_calls_only_that_tool(tiny):
    spec = sd.tool_calls(TOOLS, tool_choice={"type": "function", "function": {"name": "add"}})
    out = sd.generate(tiny, "x", constraint=spec, max_tokens=200, search=sd.Sample(n=4, seed=3))
    for h in out.hypotheses:
        if h.finish_reason == "stop":
            assert {c["name"] for c in spec.parse(h.text)} == {"add"}


def test_auto_allows_a_plain_answer_or_valid_calls(tiny):
    spec = sd.tool_calls(TOOLS, tool_choice="auto")
    state = spec.compile(tiny).start()
    assert not state.advance_many(tiny.encode("Sure, it is sunny.", add_special_tokens=False)).dead
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    assert state.advance_many(tiny.encode(call, add_special_tokens=False)).accepting
    bad = '<tool_call>\n{"name": "delete_everything", '
    with pytest.raises(ValueError):
        state.advance_many(tiny.encode(bad, add_special_tokens=False))


def test_a_plain_answer_can_never_be_read_as_a_call():
    from searchdec.grammars.regular import disjoint
    from searchdec.grammars.tool_calls import _CALL_START, _TEXT_PATTERN

    assert disjoint(_TEXT_PATTERN, _CALL_START) is True
    assert disjoint(r"[\s\S]*", _CALL_START) is False  # the proof can fail: any text overlaps


@pytest.mark.parametrize("fmt", ["json", "hermes"])
def test_auto_text_cannot_start_like_a_call_after_whitespace(tiny, fmt):
    state = sd.tool_calls(TOOLS, "auto", format=fmt).compile(tiny).start()
    for text in [" [", "\n<tool_call>"]:
        with pytest.raises(ValueError):
            state.advance_many(tiny.encode(text, add_special_tokens=False))


def test_none_forbids_starting_a_call(tiny):
    state = sd.tool_calls(TOOLS, tool_choice="none").compile(tiny).start()
    assert not state.allows(tiny.encode("<", add_special_tokens=False)[0])
    assert state.allows(tiny.encode("O", add_special_tokens=False)[0])


def test_arguments_outside_the_schema_are_refused(tiny):
    state = sd.tool_calls(TOOLS, tool_choice="required").compile(tiny).start()
    wrong = '<tool_call>\n{"name": "add", "arguments": {"a": 100'
    with pytest.raises(ValueError):
        state.advance_many(tiny.encode(wrong, add_special_tokens=False))


ANSWER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.mark.parametrize("fmt", ["json", "hermes"])
def test_an_answer_schema_replaces_free_text_beside_calls(tiny, fmt):
    spec = sd.tool_calls(TOOLS, "auto", format=fmt, answer=sd.json_schema(ANSWER))
    state = spec.compile(tiny).start()
    answer = '{"city": "Paris"}'
    assert state.advance_many(tiny.encode(answer, add_special_tokens=False)).accepting
    assert spec.parse(answer) is None
    call = '{"name": "add", "arguments": {"a": 1, "b": 2}}'
    call = f"[{call}]" if fmt == "json" else f"<tool_call>\n{call}\n</tool_call>"
    assert state.advance_many(tiny.encode(call, add_special_tokens=False)).accepting
    for wrong in ["Sure, it is sunny.", '{"town": "Paris"}']:  # free text, or JSON outside the schema
        with pytest.raises(ValueError):
            state.advance_many(tiny.encode(wrong, add_special_tokens=False))


def test_with_tool_choice_none_the_answer_schema_alone_applies(tiny):
    state = sd.tool_calls(TOOLS, "none", answer=sd.json_schema(ANSWER)).compile(tiny).start()
    assert state.advance_many(tiny.encode('{"city": "Rome"}', add_special_tokens=False)).accepting
    with pytest.raises(ValueError):
        state.advance_many(tiny.encode("<tool_call>", add_special_tokens=False))


def test_samples_beside_an_answer_schema_are_calls_or_valid_answers(tiny):
    spec = sd.tool_calls(TOOLS, "auto", format="json", answer=sd.json_schema(ANSWER))
    out = sd.generate(tiny, "x", constraint=spec, max_tokens=120, search=sd.Sample(n=8, seed=4))
    finished = [h for h in out.hypotheses if h.finish_reason == "stop"]
    assert finished
    for h in finished:
        calls = spec.parse(h.text)
        if calls is None:
            jsonschema.validate(json.loads(h.text), ANSWER)
        else:
            check_calls(calls)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tool_choice="required"), "tool_choice 'auto' or 'none'"),
        (dict(answer={"type": "array"}), "root must have a type other than array"),
        (dict(answer={"anyOf": [{"type": "object"}]}), "root must have a type other than array"),
    ],
)
def test_answer_schemas_that_cannot_sit_beside_calls_are_refused(kwargs, message):
    answer = sd.json_schema(kwargs.pop("answer", ANSWER))
    with pytest.raises(sd.ConstraintError, match=message):
        sd.tool_calls(TOOLS, format="json", answer=answer, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tools=TOOLS, tool_choice="multiply"), "not among the tools"),
        (dict(tools=[], tool_choice="required"), "needs at least one tool"),
        (dict(tools=[WEATHER, WEATHER]), "repeated: get_weather"),
        (dict(tools=TOOLS, format="xml"), "unknown tool-call format"),
        (dict(tools=[{"type": "function", "function": {}}]), "name must be a non-empty string"),
    ],
)
def test_bad_tool_lists_are_refused(kwargs, message):
    with pytest.raises(sd.ConstraintError, match=message):
        sd.tool_calls(**kwargs)


@pytest.mark.integration
def test_real_model_calls_the_weather_tool(smollm):
    spec = sd.tool_calls(TOOLS, tool_choice="required", parallel=False)  # the 135M model repeats calls
    messages = [{"role": "user", "content": "What is the weather in Paris in celsius?"}]
    out = sd.generate(smollm, messages, tools=TOOLS, constraint=spec, max_tokens=80)
    assert out.finish_reason == "stop"
    calls = spec.parse(out.text)
    check_calls(calls)
    assert calls[0]["name"] == "get_weather"


OPEN = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.mark.parametrize("fmt", ["hermes", "json"])
def test_argument_keys_a_tool_does_not_declare_are_refused(tiny, fmt):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": OPEN}}]
    state = sd.tool_calls(tools, tool_choice="required", format=fmt).compile(tiny).start()
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    call = f"[{call}]" if fmt == "json" else f"<tool_call>\n{call}\n</tool_call>"
    assert state.advance_many(tiny.encode(call, add_special_tokens=False)).accepting
    padded = call.replace('"Paris"}', '"Paris", "description": "x"}')
    with pytest.raises(ValueError):
        state.advance_many(tiny.encode(padded, add_special_tokens=False))


def test_a_schema_that_allows_extra_keys_keeps_them():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {**OPEN, "additionalProperties": True}}}]
    (tool,) = sd.tool_calls(tools).tools
    assert tool["parameters"]["additionalProperties"] is True


@pytest.mark.parametrize("parameters", [None, {}])
def test_a_tool_without_parameters_takes_an_empty_object(tiny, parameters):
    tools = [{"type": "function", "function": {"name": "now", "parameters": parameters}}]
    state = sd.tool_calls(tools, tool_choice="required", format="json").compile(tiny).start()
    assert state.advance_many(tiny.encode('[{"name": "now", "arguments": {}}]', add_special_tokens=False)).accepting
    with pytest.raises(ValueError):
        state.advance_many(tiny.encode('[{"name": "now", "arguments": {"x"', add_special_tokens=False))
