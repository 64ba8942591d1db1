"""A request means the same constraint and the same prompt in a script and over HTTP: `sd.constraint_for`
builds what the server's request preparation builds, and `sd.generate(..., tools=...)` (like
`sd.chat_prompt`) renders the tools as the server does, also for a chat template that ignores them."""

from __future__ import annotations

import pytest
from tiny import tiny_model

import searchdec as sd
from searchdec.grammars.llguidance_backend import grammar_for
from searchdec.requests import ChatFormat, RequestError
from searchdec.server.prepare import ServedModel, chat_plan
from searchdec.server.protocol import ChatCompletionRequest

# Like SmolLM2's: renders roles and contents, never `tools`.
IGNORES_TOOLS = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, TIME]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    {"role": "user", "content": "And in Rome?"},
]


@pytest.fixture
def tiny():
    """The tiny model (whose chat template renders tools), with room for a tool prompt of bytes."""
    return tiny_model(max_positions=2048)


@pytest.fixture
def plain():
    """The tiny model with a chat template that ignores tools."""
    model = tiny_model(max_positions=2048)
    model.tokenizer.chat_template = IGNORES_TOOLS
    return model


def served_plan(model, messages, **fields):
    request = ChatCompletionRequest(model="m", messages=messages, max_tokens=4, **fields)
    return chat_plan(ServedModel(model, "m"), request)


def prompt_in_generate(model, messages, **kwargs) -> list[int]:
    """The prompt token ids `sd.generate` decoded from (the root of the first new token's node)."""
    roots = []

    def on_token(_index, node):
        while node.parent is not None:
            node = node.parent
        roots.append(list(node.new_tokens))

    sd.generate(model, messages, max_tokens=1, on_token=on_token, **kwargs)
    return roots[0]


# --- constraints ----------------------------------------------------------------------------

REQUESTS = {
    "tools required": dict(tools=TOOLS, tool_choice="required"),
    "tools auto, one call": dict(tools=TOOLS, parallel_tool_calls=False),
    "named tool": dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}),
    "tools none": dict(tools=TOOLS, tool_choice="none"),
    "tools with response_format": dict(
        tools=TOOLS, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    ),
    "tools none with response_format": dict(tools=TOOLS, tool_choice="none", response_format={"type": "json_object"}),
    "strict response_format": dict(
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": True}}
    ),
    "structured_outputs regex": dict(structured_outputs={"regex": "[a-z]{3}"}),
    "structured_outputs choice": dict(structured_outputs={"choice": ["yes", "no"]}),
    "guided_json": dict(guided_json=PERSON),
    "guided_grammar": dict(guided_grammar='start: "A" | "B"'),
    "free": dict(),
}


@pytest.mark.parametrize("template", ["renders tools", "ignores tools"])
@pytest.mark.parametrize("fields", REQUESTS.values(), ids=REQUESTS.keys())
def test_a_script_builds_the_constraint_the_server_builds(tiny, template, fields):
    if template == "ignores tools":
        tiny.tokenizer.chat_template = IGNORES_TOOLS
    plan = served_plan(tiny, [{"role": "user", "content": "hi"}], **fields)
    spec = sd.constraint_for(tiny, **fields)
    assert spec == plan.spec
    if spec is None:
        assert plan.constraint is None
    else:
        assert spec.compile(tiny).grammar == plan.constraint.grammar
        assert grammar_for(spec) == grammar_for(plan.spec)


def test_the_call_format_follows_the_template(tiny, plain):
    assert sd.constraint_for(plain, tools=TOOLS).format == "json"  # as the server serves SmolLM2
    tiny.tokenizer.chat_template = IGNORES_TOOLS + "{% if tools %}{{ tools }}{% endif %}"
    assert sd.constraint_for(tiny, tools=TOOLS).format == "hermes"
    assert sd.constraint_for(tools=TOOLS).format == "hermes"  # no model: sd.tool_calls' default
    assert sd.constraint_for(plain, tools=TOOLS, tool_format="hermes").format == "hermes"


def test_tool_calls_and_the_builder_forbid_undeclared_argument_keys(plain):
    spec = sd.constraint_for(plain, tools=TOOLS, tool_choice="required")
    assert spec == sd.tool_calls(TOOLS, tool_choice="required", format="json")
    state = spec.compile(plain).start()
    padded = '[{"name": "get_weather", "arguments": {"city": "Paris", "description"'
    with pytest.raises(ValueError):
        state.advance_many(plain.encode(padded, add_special_tokens=False))
    declared = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    assert state.advance_many(plain.encode(declared, add_special_tokens=False)).accepting


@pytest.mark.parametrize(
    "fields, param",
    [
        (dict(tool_choice="required"), "tool_choice"),
        (dict(parallel_tool_calls=False), "parallel_tool_calls"),
        (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
        (dict(tools=[WEATHER, WEATHER]), "tools"),
        (dict(tools=TOOLS, guided_regex="a+"), "guided_regex"),
        (dict(guided_choice=["a"], structured_outputs={"regex": "b"}), "guided_choice"),
        (dict(structured_outputs={"regex": "a", "choice": ["b"]}), "structured_outputs"),
        (dict(structured_outputs={"jsonn": {}}), "structured_outputs.jsonn"),
        (dict(response_format={"type": "xml"}), "response_format"),
        (dict(response_format={"type": "json_schema"}), "response_format.json_schema"),
        (
            dict(tools=TOOLS, tool_format="json", response_format={"type": "json_object", "json_schema": {}}),
            "response_format.json_schema",
        ),
        (
            dict(
                tools=TOOLS, tool_format="json", response_format={"type": "json_schema", "json_schema": {"schema": {}}}
            ),
            "response_format.json_schema.schema",
        ),
    ],
)
def test_builder_refusals_name_the_request_field(fields, param):
    with pytest.raises(RequestError) as caught:
        sd.constraint_for(**fields)
    assert caught.value.param == param
    assert isinstance(caught.value, sd.ConstraintError)


# --- prompts --------------------------------------------------------------------------------


@pytest.mark.parametrize("messages", [MESSAGES, MESSAGES[1:], HISTORY], ids=["system", "no system", "history"])
def test_a_template_that_ignores_tools_gets_the_servers_tool_prompt_in_scripts(plain, messages):
    served = served_plan(plain, messages, tools=TOOLS).prompts[0]
    assert prompt_in_generate(plain, messages, tools=TOOLS) == served
    assert sd.chat_prompt(plain, messages, TOOLS) == served
    without = sd.chat_prompt(plain, messages)
    assert without == served_plan(plain, messages).prompts[0]
    assert served != without
    text = plain.decode(served)
    assert '"name": "get_weather"' in text and "Current weather in a city" in text


def test_earlier_calls_are_written_out_in_the_call_format(plain):
    text = plain.decode(sd.chat_prompt(plain, HISTORY, TOOLS))
    assert '<assistant>[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n' in text
    assert '<tool>{"temperature": 21}\n' in text


def test_a_template_that_renders_tools_gets_them_in_scripts_as_over_http(tiny):
    served = served_plan(tiny, HISTORY, tools=TOOLS).prompts[0]
    assert prompt_in_generate(tiny, HISTORY, tools=TOOLS) == served
    assert "tools:2\n" in tiny.decode(served) and "<system>" not in tiny.decode(served)


def test_a_tool_call_constraint_sets_the_format_the_prompt_describes(plain):
    for fmt, how in [("hermes", "<tool_call>\n{"), ("json", '[{"name": "func_name1"')]:
        spec = sd.tool_calls(TOOLS, tool_choice="required", format=fmt)
        prompt = prompt_in_generate(plain, MESSAGES, tools=TOOLS, constraint=spec)
        assert how in plain.decode(prompt)
        assert prompt == sd.chat_prompt(plain, MESSAGES, TOOLS, tool_format=fmt)


def test_developer_messages_and_text_parts_render_as_over_http(plain):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    assert sd.chat_prompt(plain, messages) == served_plan(plain, messages).prompts[0]
    assert plain.decode(sd.chat_prompt(plain, messages)) == "<system>Be brief.\n<user>a\nb\n<assistant>"


@pytest.mark.parametrize(
    "messages, param",
    [
        ([{"content": "hi"}], "messages[0].role"),
        ([{"role": "tool", "content": "1"}], "messages[0].tool_call_id"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content[0]"),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}],
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_bad_messages_are_refused_before_generation_naming_the_field(plain, messages, param):
    with pytest.raises(RequestError) as caught:
        sd.generate(plain, messages, max_tokens=1)
    assert caught.value.param == param


def test_an_unknown_tool_format_is_refused(plain):
    with pytest.raises(ValueError, match="unknown tool-call format 'xml'"):
        ChatFormat(plain, "xml")


# --- the real default model ------------------------------------------------------------------


@pytest.mark.integration
def test_the_default_model_sees_the_tools_in_a_script_as_over_http(smollm):
    messages = MESSAGES[1:]
    served = served_plan(smollm, messages, tools=TOOLS).prompts[0]
    assert prompt_in_generate(smollm, messages, tools=TOOLS) == served
    assert served != sd.chat_prompt(smollm, messages)  # SmolLM2's template alone would drop them


@pytest.mark.integration
def test_sampled_script_calls_hold_only_declared_argument_keys(smollm):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "calculate_triangle_area",
                "parameters": {
                    "type": "object",
                    "properties": {"base": {"type": "integer"}, "height": {"type": "integer"}},
                    "required": ["base", "height"],
                },
            },
        }
    ]
    messages = [{"role": "user", "content": "Find the area of a triangle with a base of 10 units and height of 5."}]
    spec = sd.constraint_for(smollm, tools=tools, tool_choice="required")
    out = sd.generate(smollm, messages, tools=tools, constraint=spec, max_tokens=60,
                      search=sd.Sample(temperature=1.0, n=8, seed=0))  # fmt: skip
    finished = [h for h in out.hypotheses if h.finish_reason == "stop"]
    assert finished
    for h in finished:
        for call in spec.parse(h.text):
            assert set(call["arguments"]) <= {"base", "height"}, h.text
