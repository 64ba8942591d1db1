"""The OpenAI-compatible server, driven over HTTP by the official `openai` client with the real default
model (SmolLM2-135M-Instruct): response shapes, enforced tool calls and structured output, streaming,
errors as the right `openai` exceptions, batching, and freeing the work of a client that goes away."""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
from live_server import LiveServer  # noqa: E402
from pydantic import BaseModel  # noqa: E402

pytestmark = pytest.mark.integration
MODEL = "smollm2-135m"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="session")
def server():
    import searchdec as sd
    from searchdec.server import create_app

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = sd.load(MODEL)  # its own Model: the server's thread never shares a prefix cache with a test
    with LiveServer(create_app(model, MODEL, default_max_tokens=24)) as live:
        yield live


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)


def check_calls(calls, names=None):
    assert calls, "expected tool calls"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in (names or SCHEMAS)
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_plain_chat_has_openai_shape(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("What is the capital of France?"), temperature=0,
                                       max_tokens=20)  # fmt: skip
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert isinstance(r.created, int)
    choice = r.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_server_output_equals_in_process_generate(client, smollm):
    import searchdec as sd

    messages = ask("Name a color.")
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12)
    out = sd.generate(smollm, messages, max_tokens=12)
    assert r.choices[0].message.content == out.text
    assert r.usage.completion_tokens == len(out.tokens)


def test_openai_penalties_equal_in_process_generate_with_them(client, smollm):
    """frequency_penalty, presence_penalty and logit_bias map onto `sd.Sample(...)`: a seeded request
    gives what a script gets (vLLM's formulas; search/processors.py)."""
    import searchdec as sd

    messages = ask("List three fruits.")
    bias = {smollm.encode(" apple")[0]: 4.0}
    r = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0.7, seed=3, max_tokens=16, frequency_penalty=1.2,
        presence_penalty=0.6, logit_bias={str(t): b for t, b in bias.items()},
    )  # fmt: skip
    search = sd.Sample(0.7, seed=3, frequency_penalty=1.2, presence_penalty=0.6, logit_bias=bias)
    assert r.choices[0].message.content == sd.generate(smollm, messages, max_tokens=16, search=search).text
    plain = client.chat.completions.create(model=MODEL, messages=messages, temperature=0.7, seed=3, max_tokens=16)
    assert plain.choices[0].message.content != r.choices[0].message.content


def test_logit_bias_of_100_forces_its_token_on_completions(client, smollm):
    token = smollm.encode(" blue")[0]
    r = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0,
                                  logit_bias={str(token): 100})  # fmt: skip
    assert r.choices[0].text == smollm.decode([token] * 4)


def test_repetition_penalty_extension_equals_greedy_with_it(client, smollm):
    import searchdec as sd

    messages = ask("Repeat after me: la la la la la la")
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16,
                                       extra_body={"repetition_penalty": 1.5, "no_repeat_ngram_size": 2})  # fmt: skip
    search = sd.Greedy(repetition_penalty=1.5, no_repeat_ngram_size=2)
    assert r.choices[0].message.content == sd.generate(smollm, messages, max_tokens=16, search=search).text


def test_max_tokens_cut_reports_length(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("Write a long poem."), temperature=0,
                                       max_completion_tokens=5)  # fmt: skip
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_stream_concatenates_to_the_whole_answer_with_usage_and_done(client, server):
    kwargs = dict(model=MODEL, messages=ask("Say hello."), temperature=0, max_tokens=16)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**kwargs, "stream": True}, timeout=600) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_response_format_json_schema_output_validates(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ask("Describe a person as JSON."), temperature=0, max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    )  # fmt: skip
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_parse_with_a_pydantic_model(client):
    class City(BaseModel):
        name: str
        country: str

    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(
        model=MODEL, messages=ask("Give me a city in France."), response_format=City, temperature=0, max_tokens=40
    )
    assert isinstance(r.choices[0].message.parsed, City)


def test_json_object_output_is_an_object(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("A JSON object with a name."), temperature=0,
                                       max_tokens=30, response_format={"type": "json_object"})  # fmt: skip
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].finish_reason == "length"


def test_tool_choice_required_returns_valid_calls(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("What's the weather in Paris?"), tools=TOOLS,
                                       tool_choice="required", temperature=0, max_tokens=64)  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice.message.content
    check_calls(choice.message.tool_calls)


def test_named_tool_choice_calls_only_that_tool_and_finishes_with_stop(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ask("What's the weather in Paris?"), tools=TOOLS, temperature=0, max_tokens=64,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "stop"  # as OpenAI answers a named tool_choice
    check_calls(choice.message.tool_calls, names={"get_time"})


def test_tool_choice_none_never_calls(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("What's the weather in Paris?"), tools=TOOLS,
                                       tool_choice="none", temperature=0, max_tokens=20)  # fmt: skip
    choice = r.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.message.content[0] not in "<["


def test_tool_choice_auto_answers_or_calls_validly(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("Hi! How are you?"), tools=TOOLS, temperature=0,
                                       max_tokens=20)  # fmt: skip
    choice = r.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        check_calls(choice.message.tool_calls)
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


def test_parallel_tool_calls_false_gives_exactly_one_call(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ask("Weather in Paris and the time in Tokyo?"), tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=64,
    )  # fmt: skip
    assert len(r.choices[0].message.tool_calls) == 1
    check_calls(r.choices[0].message.tool_calls)


def test_parallel_tool_calls_can_return_several_calls(client):
    # Sampled hypotheses: with parallel calls allowed, some return more than one call, all valid.
    r = client.chat.completions.create(
        model=MODEL, messages=ask("Get the weather in Paris, and in London, and in Rome."), tools=TOOLS,
        tool_choice="required", n=6, seed=3, temperature=1.0, max_tokens=64,
    )  # fmt: skip
    counts = []
    for choice in r.choices:
        if choice.finish_reason == "tool_calls":
            check_calls(choice.message.tool_calls)
            counts.append(len(choice.message.tool_calls))
    assert counts and max(counts) > 1


def test_a_stop_string_that_cuts_a_call_never_returns_it_as_a_call(client, server):
    kwargs = dict(model=MODEL, messages=ask("What's the weather in Paris?"), tools=TOOLS, tool_choice="required",
                  stop=["city"], temperature=0, max_tokens=40)  # fmt: skip
    choice = client.chat.completions.create(**kwargs).choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"
    assert choice.message.content and "city" not in choice.message.content
    body = {**kwargs, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=600) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "stop"


def test_streamed_tool_calls_reassemble_with_the_stream_helper(client):
    kwargs = dict(model=MODEL, messages=ask("What's the weather in Paris?"), tools=TOOLS, tool_choice="required",
                  temperature=0, max_tokens=64)  # fmt: skip
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
    with client.chat.completions.stream(**kwargs) as stream:
        deltas = [event for event in stream if event.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 1  # arguments arrive in pieces
    streamed = final.choices[0].message.tool_calls
    check_calls(streamed)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed] == [
        (c.function.name, json.loads(c.function.arguments)) for c in whole
    ]
    assert final.choices[0].finish_reason == "tool_calls"


def test_raw_tool_call_deltas_send_id_and_name_once(server):
    body = {"model": MODEL, "messages": ask("What's the weather in Paris?"), "tools": TOOLS,
            "tool_choice": "required", "temperature": 0, "max_tokens": 40, "stream": True}  # fmt: skip
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=600) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    calls = [d for e in events for d in e["choices"][0]["delta"].get("tool_calls", [])]
    assert calls and all("index" in d for d in calls)
    assert sum("id" in d for d in calls) == len({d["index"] for d in calls})
    assert all("id" not in d and "name" not in d["function"] for d in calls[1:] if d["index"] == calls[0]["index"])


def test_history_with_tool_calls_and_results_is_accepted(client):
    messages = ask("What's the weather in Paris?") + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]  # fmt: skip
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                       temperature=0, max_tokens=16)  # fmt: skip
    assert r.choices[0].message.content


def test_n_samples_are_indexed_and_seeded(client):
    kwargs = dict(model=MODEL, messages=ask("Name an animal."), n=3, temperature=1.0, seed=7, max_tokens=8)
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]


def test_logprobs_report_the_chosen_token_and_its_alternatives(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("Say yes."), temperature=0, max_tokens=6,
                                       logprobs=True, top_logprobs=3)  # fmt: skip
    content = r.choices[0].logprobs.content
    assert content
    assert "".join(e.token for e in content) == r.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy picks the best


def test_completions_endpoint_text_stream_and_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=6,
                                  logprobs=2)  # fmt: skip
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    choice = r.choices[0]
    eos = 1 if choice.finish_reason == "stop" else 0
    assert "Paris" in choice.text and len(choice.logprobs.tokens) == r.usage.completion_tokens - eos
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=6, stream=True
        )  # fmt: skip
    )
    assert streamed == choice.text


@pytest.mark.parametrize(
    "extra, check",
    [
        ({"structured_outputs": {"regex": r"[0-9]{3}-[0-9]{4}"}}, r"[0-9]{3}-[0-9]{4}"),
        ({"structured_outputs": {"choice": ["yes", "no"]}}, r"yes|no"),
        ({"guided_choice": ["red", "blue"]}, r"red|blue"),
        ({"guided_regex": r"[a-z]{2,5}"}, r"[a-z]{2,5}"),
        ({"structured_outputs": {"grammar": 'start: "A" | "B" "C"'}}, r"A|BC"),
    ],
)
def test_constraint_extensions_are_enforced(client, extra, check):
    import re

    r = client.chat.completions.create(model=MODEL, messages=ask("Answer."), temperature=0, max_tokens=12,
                                       extra_body=extra)  # fmt: skip
    assert r.choices[0].finish_reason == "stop"
    assert re.fullmatch(check, r.choices[0].message.content)


def test_guided_json_is_enforced(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("A person."), temperature=0, max_tokens=40,
                                       extra_body={"guided_json": PERSON})  # fmt: skip
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_search_extension_greedy_equals_temperature_zero(client):
    kwargs = dict(model=MODEL, messages=ask("Name a fruit."), max_tokens=8)
    greedy = client.chat.completions.create(**kwargs, extra_body={"search": {"algorithm": "greedy"}})
    assert (
        greedy.choices[0].message.content
        == client.chat.completions.create(**kwargs, temperature=0).choices[0].message.content
    )
    sampled = client.chat.completions.create(
        **kwargs, n=2, extra_body={"search": {"algorithm": "sample", "temperature": 0.8, "seed": 1}}
    )
    assert len(sampled.choices) == 2


# --- the search extension -------------------------------------------------------------------------


def test_beam_search_returns_its_n_best_hypotheses_as_choices(client, smollm):
    import searchdec as sd

    messages = ask("Name a fruit.")
    r = client.chat.completions.create(model=MODEL, messages=messages, n=2, max_tokens=12, logprobs=True,
                                       extra_body={"search": {"algorithm": "beam", "width": 3}})  # fmt: skip
    out = sd.generate(smollm, messages, max_tokens=12, search=sd.Beam(width=3, num_return=2))
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.message.content for c in r.choices] == [h.text for h in out.hypotheses]
    assert [c.finish_reason for c in r.choices] == [h.finish_reason for h in out.hypotheses]
    assert r.usage.completion_tokens == sum(len(h.tokens) for h in out.hypotheses)
    for choice in r.choices:  # each token's own log-probability (a whole search keeps no alternatives)
        assert "".join(e.token for e in choice.logprobs.content) == choice.message.content


def test_best_of_n_ranks_its_samples_by_mean_token_logprob(client, smollm):
    import searchdec as sd
    from searchdec import rewards

    messages = ask("Name a fruit.")
    search = {"algorithm": "best_of_n", "n": 4, "temperature": 1.0, "seed": 3}
    r = client.chat.completions.create(model=MODEL, messages=messages, n=2, max_tokens=10,
                                       extra_body={"search": search})  # fmt: skip
    spec = sd.BestOfN(n=4, reward=rewards.MeanLogprob(), sample=sd.Sample(temperature=1.0, n=4, seed=3))
    out = sd.generate(smollm, messages, max_tokens=10, search=spec)
    assert [c.message.content for c in r.choices] == [h.text for h in out.hypotheses[:2]]
    for h in out.hypotheses:
        assert h.score == pytest.approx(math.exp(sum(h.token_logprobs) / len(h.token_logprobs)))


@pytest.mark.parametrize(
    "search",
    [
        {"algorithm": "best_of_n", "n": 3, "reward": "self_eval", "seed": 1},
        {"algorithm": "best_of_n", "n": 3, "aggregate": "majority", "seed": 1},
        {"algorithm": "diverse_beam", "width": 4, "groups": 2, "diversity_penalty": 1.0},
        {"algorithm": "best_first_beam", "width": 2},
        {"algorithm": "mbr", "n": 4, "utility": "chrf", "seed": 1},
        {"algorithm": "priority"},
    ],
)
def test_every_registered_search_is_served(client, search):
    r = client.chat.completions.create(model=MODEL, messages=ask("Name a color."), n=2, max_tokens=8,
                                       extra_body={"search": search})  # fmt: skip
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content and c.finish_reason in ("stop", "length") for c in r.choices)


def test_searched_json_schema_outputs_validate(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ask("Describe a person as JSON."), n=2, max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        extra_body={"search": {"algorithm": "beam", "width": 2}},
    )  # fmt: skip
    assert [c.finish_reason for c in r.choices] == ["stop", "stop"]
    for choice in r.choices:
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_searched_tool_calls_validate(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ask("What's the weather in Paris?"), tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, max_tokens=40, extra_body={"search": {"algorithm": "best_of_n", "n": 3, "seed": 0}},
    )  # fmt: skip
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    check_calls(r.choices[0].message.tool_calls)


def test_a_streamed_search_sends_each_choice_when_the_search_ends(client):
    kwargs = dict(model=MODEL, messages=ask("Name a fruit."), n=2, max_tokens=12,
                  extra_body={"search": {"algorithm": "beam", "width": 3}})  # fmt: skip
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == choice.index]
        assert mine[0].delta.role == "assistant"
        assert "".join(m.delta.content or "" for m in mine) == choice.message.content
        assert mine[-1].finish_reason == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_other_requests_keep_streaming_while_a_search_runs(client, server):
    body = {"model": MODEL, "messages": ask("Write a very long story."), "max_tokens": 30,
            "search": {"algorithm": "beam", "width": 4, "early_stopping": "never"}}  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        searching = pool.submit(httpx.post, server.url + "/v1/chat/completions", json=body, timeout=600)
        while health(server)["running"] == 0:
            time.sleep(0.02)
        stream = client.chat.completions.create(model=MODEL, messages=ask("Count to ten."), temperature=0,
                                                max_tokens=6, stream=True)  # fmt: skip
        assert [c.choices[0].finish_reason for c in stream][-1] in ("stop", "length")
        assert not searching.done()  # the stream was served to its end while the search ran
        assert searching.result().status_code == 200


def test_a_client_that_gives_up_on_a_search_stops_it(server):
    before = health(server)
    body = {"model": MODEL, "messages": ask("Write a very long story."), "max_tokens": 2000,
            "search": {"algorithm": "beam", "width": 4, "early_stopping": "never"}}  # fmt: skip
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=2))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = health(server)
        if state["cancelled"] > before["cancelled"] and state["running"] == 0:
            break
        time.sleep(0.2)
    assert state["cancelled"] > before["cancelled"] and state["running"] == 0
    assert state["completed"] == before["completed"]  # stopped, not run to its end


def test_completions_take_the_search_extension(client, smollm):
    import searchdec as sd

    prompt = "The capital of France is"
    r = client.completions.create(model=MODEL, prompt=prompt, n=2, max_tokens=6,
                                  extra_body={"search": {"algorithm": "beam", "width": 2}})  # fmt: skip
    out = sd.generate(smollm, prompt, max_tokens=6, search=sd.Beam(width=2, num_return=2))
    assert [c.text for c in r.choices] == [h.text for h in out.hypotheses]


def test_completions_best_of_returns_the_most_likely_of_its_samples(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", best_of=3, max_tokens=6, seed=1)
    assert len(r.choices) == 1 and r.choices[0].text
    e = error_of(lambda: client.completions.create(model=MODEL, prompt="Hi", best_of=2, stream=True))
    assert isinstance(e, openai.BadRequestError) and e.param == "best_of"


# --- tools with response_format -------------------------------------------------------------------


def person_format(schema=PERSON) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}


def test_tools_with_response_format_call_a_tool_or_answer_in_the_format(client):
    kwargs = dict(model=MODEL, tools=TOOLS, parallel_tool_calls=False, response_format=person_format(),
                  temperature=0, max_tokens=48)  # fmt: skip
    call = client.chat.completions.create(messages=ask("What's the weather in Paris?"), **kwargs).choices[0]
    assert call.finish_reason == "tool_calls" and call.message.content is None
    check_calls(call.message.tool_calls)
    answer = client.chat.completions.create(messages=ask("Describe a person as JSON."), **kwargs).choices[0]
    assert answer.finish_reason == "stop" and answer.message.tool_calls is None
    jsonschema.validate(json.loads(answer.message.content), PERSON)
    streamed = client.chat.completions.create(messages=ask("Describe a person as JSON."), stream=True, **kwargs)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer.message.content


@pytest.mark.parametrize(
    "tool_choice, calls",
    [("none", False), ("required", True), ({"type": "function", "function": {"name": "get_time"}}, True)],
)
def test_tool_choice_decides_whether_response_format_applies(client, tool_choice, calls):
    choice = client.chat.completions.create(
        model=MODEL, messages=ask("What's the weather in Paris?"), tools=TOOLS, tool_choice=tool_choice,
        parallel_tool_calls=False, response_format=person_format(), temperature=0, max_tokens=48,
    ).choices[0]  # fmt: skip
    if calls:  # the call is what comes back: response_format does not apply to it
        check_calls(choice.message.tool_calls)
    else:
        assert choice.message.tool_calls is None
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_parse_with_pydantic_tools_and_response_format(client):
    class Person(BaseModel):
        name: str
        age: int

    class GetWeather(BaseModel):
        city: str

    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    kwargs = dict(model=MODEL, response_format=Person, tools=[openai.pydantic_function_tool(GetWeather)],
                  parallel_tool_calls=False, temperature=0, max_tokens=48)  # fmt: skip
    answer = parse(messages=ask("Describe a person as JSON."), **kwargs).choices[0].message
    assert isinstance(answer.parsed, Person) and not answer.tool_calls
    call = parse(messages=ask("What's the weather in Paris?"), **kwargs).choices[0].message
    assert isinstance(call.tool_calls[0].function.parsed_arguments, GetWeather)


def test_every_sampled_json_schema_output_validates(client):
    r = client.chat.completions.create(
        model=MODEL, messages=ask("Describe a person as JSON."), n=4, temperature=1.3, seed=5, max_tokens=40,
        response_format=person_format(),
    )  # fmt: skip
    for choice in r.choices:  # the budget closes every document within max_tokens
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PERSON)


# --- errors -------------------------------------------------------------------------------------


def error_of(call):
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


def test_unknown_model_is_not_found(client):
    e = error_of(lambda: client.chat.completions.create(model="nope", messages=ask("hi")))
    assert isinstance(e, openai.NotFoundError) and e.code == "model_not_found" and e.param == "model"
    e = error_of(lambda: client.completions.create(model="nope", prompt="hi"))
    assert isinstance(e, openai.NotFoundError) and e.code == "model_not_found"
    assert isinstance(error_of(lambda: client.models.retrieve("nope")), openai.NotFoundError)


@pytest.mark.parametrize(
    "kwargs, param, code",
    [
        ({"tool_choice": "required"}, "tool_choice", None),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", None),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
            "response_format.json_schema.schema",
            "invalid_schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"anyOf": [{"type": "array", "uniqueItems": True}, {"type": "string"}]},
                    },
                }
            },
            "response_format.json_schema.schema",
            "unsupported_schema_keyword",
        ),
        ({"extra_body": {"guided_regex": "("}}, "guided_regex", "invalid_grammar"),
        ({"extra_body": {"guided_foo": "x"}}, "guided_foo", "unknown_parameter"),
        ({"extra_body": {"structured_outputs": {"jsonn": {}}}}, "structured_outputs.jsonn", "unknown_parameter"),
        ({"extra_body": {"structured_outputs": {"regex": "a", "choice": ["b"]}}}, "structured_outputs", None),
        ({"extra_body": {"search": {"algorithm": "nope"}}}, "search.algorithm", None),
        ({"extra_body": {"search": {"algorithm": "sample", "width": 3}}}, "search.width", None),
        ({"n": 3, "extra_body": {"search": {"algorithm": "beam", "width": 2}}}, "search", None),
        ({"extra_body": {"search": {"algorithm": "beam", "width": 1000}}}, "search", None),
        ({"extra_body": {"search": {"algorithm": "beam", "num_return": 2}}}, "search.num_return", None),
        ({"extra_body": {"search": {"algorithm": "beam", "early_stopping": "soon"}}}, "search", None),
        ({"extra_body": {"search": {"algorithm": "best_of_n", "reward": "magic"}}}, "search", None),
        ({"extra_body": {"search": {"algorithm": "best_of_n", "reward": "none"}}}, "search", None),
        ({"extra_body": {"search": {"algorithm": "mbr", "utility": "bleu"}}}, "search", None),
        ({"extra_body": {"search": {"algorithm": "priority", "branching": 0}}}, "search", None),
        ({"temperature": 0.5, "extra_body": {"search": {"algorithm": "beam"}}}, "temperature", None),
        ({"logprobs": True, "top_logprobs": 2, "extra_body": {"search": {"algorithm": "beam"}}}, "top_logprobs", None),
        (
            {"tools": TOOLS, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
            "response_format.json_schema.schema",
            "invalid_constraint",
        ),
        ({"tools": TOOLS, "extra_body": {"guided_regex": "a+"}}, "guided_regex", None),
        ({"n": 0}, "n", "invalid_value"),
        ({"max_tokens": 9000}, "max_tokens", "context_length_exceeded"),
        ({"reasoning_effort": "high"}, "reasoning_effort", "unsupported_parameter"),
        ({"frequency_penalty": 2.5}, "frequency_penalty", None),
        ({"presence_penalty": -3}, "presence_penalty", None),
        ({"logit_bias": {"99999999": 5}}, "logit_bias", None),
        ({"logit_bias": {"the": 5}}, "logit_bias", None),
        ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty", None),
        ({"extra_body": {"typical_p": 1.5}}, "typical_p", None),
        ({"extra_body": {"search": {"algorithm": "sample", "presence_penalty": 5}}}, "search.presence_penalty", None),
        ({"frequency_penalty": 0.5, "extra_body": {"search": {"algorithm": "beam"}}}, "frequency_penalty", None),
        ({"top_logprobs": 2}, "top_logprobs", None),
    ],
)
def test_bad_requests_are_400_naming_the_field(client, kwargs, param, code):
    e = error_of(lambda: client.chat.completions.create(model=MODEL, messages=ask("hi"), **kwargs))
    assert isinstance(e, openai.BadRequestError), e
    assert e.param == param and (code is None or e.code == code), e.body
    assert set(e.body) >= {"message", "type", "param", "code"} and e.type == "invalid_request_error"


def test_context_overflow_is_a_400(client):
    e = error_of(lambda: client.chat.completions.create(model=MODEL, messages=ask("word " * 9000), max_tokens=1))
    assert isinstance(e, openai.BadRequestError) and e.code == "context_length_exceeded"


def test_malformed_json_and_validation_errors_are_openai_400s(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=60,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(server.url + "/v1/nothing", timeout=60).status_code == 404


# --- concurrency --------------------------------------------------------------------------------


def health(server) -> dict:
    return httpx.get(server.url + "/health", timeout=60).json()


def test_concurrent_requests_are_batched_and_all_succeed(client, server):
    def one(i):
        return client.chat.completions.create(model=MODEL, messages=ask(f"Count to {i}."), temperature=0, max_tokens=8)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert all(r.choices[0].message.content for r in results)
    assert health(server)["max_batch_rows"] > 1


def test_a_client_that_stops_reading_its_stream_does_not_stall_others(client, server):
    body = {"model": MODEL, "messages": ask("Write a very long story."), "temperature": 0, "max_tokens": 2000,
            "stream": True}  # fmt: skip
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=600) as slow:
        lines = slow.iter_lines()
        next(lines)  # then it reads nothing more while another client is served
        started = time.monotonic()
        other = client.chat.completions.create(model=MODEL, messages=ask("Say hi."), temperature=0, max_tokens=8)
        assert other.choices[0].message.content and time.monotonic() - started < 30
        state = health(server)
        assert state["running"] == 1 and state["rows"] == 1  # the slow one is still being decoded, unblocked


def test_a_client_that_disconnects_mid_stream_frees_its_work(server):
    before = health(server)
    body = {"model": MODEL, "messages": ask("Write a very long story."), "temperature": 0, "max_tokens": 2000,
            "stream": True}  # fmt: skip
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=600) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = health(server)
        if state["cancelled"] > before["cancelled"] and state["running"] == 0:
            break
        time.sleep(0.2)
    assert state["cancelled"] > before["cancelled"] and state["running"] == 0 and state["rows"] == 0
    assert state["completed"] == before["completed"]  # dropped, not decoded to its end
    time.sleep(0.5)
    assert health(server)["steps"] == state["steps"]  # nothing is decoding any more


def test_a_client_that_gives_up_on_a_whole_response_frees_its_work(server):
    before = health(server)["cancelled"]
    body = {"model": MODEL, "messages": ask("Write a very long story."), "temperature": 0, "max_tokens": 2000}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=2))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = health(server)
        if state["cancelled"] > before and state["running"] == 0:
            break
        time.sleep(0.2)
    assert state["cancelled"] > before and state["running"] == 0


def test_sigterm_lets_in_flight_requests_finish_then_exits():
    """`searchdec serve` as its own process: SIGTERM stops new work, the request in flight completes."""
    from live_server import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "searchdec", "serve", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(
        command, cwd=Path(__file__).resolve().parents[1], env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and process.poll() is None, "the server did not start"
                time.sleep(0.3)
        body = {"model": MODEL, "messages": ask("Write a story."), "temperature": 0, "max_tokens": 12}
        searched = {**body, "n": 2, "search": {"algorithm": "beam", "width": 2, "early_stopping": "never"}}
        del searched["temperature"]  # the search holds the decoding parameters

        def in_flight() -> int:
            state = httpx.get(url + "/health", timeout=5).json()
            return state["running"] + state["queued"]

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            pending = []
            for request in (searched, body):
                pending.append(pool.submit(httpx.post, url + "/v1/chat/completions", json=request, timeout=600))
                while in_flight() < len(pending) and not any(p.done() for p in pending):
                    time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            search, response = [p.result() for p in pending]
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 12  # all of it, not cut by the shutdown
        assert search.status_code == 200 and len(search.json()["choices"]) == 2  # a queued search runs too
        assert process.wait(120) == 0  # a shutdown that was asked for and drained cleanly
    finally:
        if process.poll() is None:
            process.kill()


def test_load_of_concurrent_clients_completes_without_errors(server):
    """A small version of benchmarks/server_load.py (32 clients x 8 requests there)."""
    import asyncio

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import server_load

    results, _ = asyncio.run(server_load.run_load(server.url, clients=8, requests=2, max_tokens=8))
    assert results.errors == [] and len(results.latencies) == 16
