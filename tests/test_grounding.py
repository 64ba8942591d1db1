"""The grounding reward for tool calls: argument values the conversation supports score higher than
invented ones, with strings, numbers, dates and enums normalised and schema defaults counted; the
tools come from the reward or from the prompt's own listing; it works in best-of-N over a tool-call
constraint and through the server's search extension."""

from __future__ import annotations

import json
import pickle

import pytest

import searchdec as sd
from searchdec.requests import tool_prompt
from searchdec.rewards import Grounding
from searchdec.rewards.grounding import parse_calls

TRIANGLE = {
    "type": "function",
    "function": {
        "name": "calculate_triangle_area",
        "description": "Area of a triangle.",
        "parameters": {
            "type": "object",
            "properties": {
                "base": {"type": "integer"},
                "height": {"type": "integer"},
                "unit": {"type": "string", "description": "The unit of measure (defaults to 'units')"},
                "round": {"type": "boolean", "default": False},
            },
            "required": ["base", "height"],
        },
    },
}
QUESTION = "Find the area of a triangle with a base of 10 units and height of five units."


def call(name="calculate_triangle_area", **arguments) -> str:
    return json.dumps([{"name": name, "arguments": arguments}])


def score(output: str, conversation: str = QUESTION, tools=(TRIANGLE,), **options) -> float:
    return Grounding(list(tools), **options).score(conversation, output)


def test_values_from_the_conversation_score_one():
    assert score(call(base=10, height=5)) == 1.0  # "five" is 5


def test_an_invented_value_lowers_the_score():
    assert score(call(base=10, height=7)) < score(call(base=10, height=5))
    assert score(call(base=10, height=5, unit="cm")) < score(call(base=10, height=5))


def test_schema_defaults_and_described_defaults_count():
    assert score(call(base=10, height=5, round=False)) == 1.0
    assert score(call(base=10, height=5, round=True)) < 1.0
    assert score(call(base=10, height=5, unit="Units")) == 1.0


def test_strings_are_normalised_and_partly_supported_by_their_words():
    tools = [{"name": "weather", "parameters": {"properties": {"city": {"type": "string"}}}}]
    said = "What's the weather in San Francisco, California today?"
    assert score(call("weather", city="san_francisco"), said, tools, names=False) == 1.0
    assert score(call("weather", city="San Francisco, TX"), said, tools, names=False) == pytest.approx(2 / 3)
    assert score(call("weather", city="Paris"), said, tools, names=False) == 0.0


def test_numbers_as_words_scales_and_percentages():
    tools = [{"name": "loan", "parameters": {"properties": {"amount": {}, "rate": {}, "years": {}}}}]
    said = "A loan of 3 million dollars at 5% for twenty five years, or 1,200 a month."
    assert score(call("loan", amount=3_000_000, rate=0.05, years=25), said, tools, names=False) == 1.0
    assert score(call("loan", amount=1200, rate=5, years=25), said, tools, names=False) == 1.0
    assert score(call("loan", amount=3_000_001, rate=5, years=25), said, tools, names=False) == pytest.approx(2 / 3)


def test_dates_match_in_any_common_form():
    tools = [{"name": "book", "parameters": {"properties": {"day": {"type": "string"}}}}]
    said = "Book a table for March 5th, 2024 please."
    assert score(call("book", day="2024-03-05"), said, tools, names=False) == 1.0
    assert score(call("book", day="03/05/2024"), said, tools, names=False) == 1.0
    assert score(call("book", day="2024-03-06"), said, tools, names=False) == 0.0
    assert score(call("book", day="2023-03-05"), said, tools, names=False) == 0.0


def test_enums_are_supported_when_named_and_a_single_value_enum_always():
    tools = [
        {
            "name": "convert",
            "parameters": {
                "properties": {
                    "to": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "kind": {"type": "string", "enum": ["temperature"]},
                }
            },
        }
    ]
    said = "Convert 70 degrees to Celsius."
    assert score(call("convert", to="celsius", kind="temperature"), said, tools, names=False) == 1.0
    assert score(call("convert", to="fahrenheit", kind="temperature"), said, tools, names=False) == 0.5


def test_the_function_name_is_scored_by_its_words():
    circle = {"name": "calculate_circle_area", "parameters": {"properties": {"radius": {}}}}
    tools = [TRIANGLE, circle]
    assert score(call(base=10, height=5), tools=tools) > score(call("calculate_circle_area", radius=10), tools=tools)


def test_lists_and_objects_count_each_leaf():
    tools = [{"name": "f", "parameters": {"properties": {"xs": {"type": "array"}, "o": {"type": "object"}}}}]
    said = "Sum 1, 2 and 3 for user alice."
    assert score(call("f", xs=[1, 2, 3], o={"user": "alice"}), said, tools, names=False) == 1.0
    assert score(call("f", xs=[1, 2, 9], o={"user": "bob"}), said, tools, names=False) == 0.5


def test_no_call_scores_zero_and_a_call_without_arguments_one():
    assert score("The area is 25.") == 0.0
    assert score('[{"name": "calculate_tri') == 0.0  # no name yet
    assert score(call(), names=False) == 1.0


def test_an_unfinished_call_is_scored_on_the_values_it_has_completed():
    full = call(base=10, height=7)
    assert parse_calls(full[: full.index("7")]) == [{"name": "calculate_triangle_area", "arguments": {"base": 10}}]
    assert score(full[: full.index("7")]) == 1.0  # the height being written does not count yet
    assert score(full[: full.index("7") + 1]) == 1.0  # "7" may still become "75": left out until complete
    assert score(full[:-2]) < 1.0  # {"base": 10, "height": 7} is complete
    assert parse_calls('[{"name": "calculate_tri') == []
    assert parse_calls('[{"name": "f", "arguments": {"city": "San Fr') == [{"name": "f", "arguments": {}}]
    hermes = '<tool_call>\n{"name": "f", "arguments": {"a": "x", "b": 1'
    assert parse_calls(hermes) == [{"name": "f", "arguments": {"a": "x"}}]


def test_a_repeated_call_scores_zero_for_its_values():
    once = {"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}
    other = {"name": "calculate_triangle_area", "arguments": {"base": 5, "height": 10}}
    assert score(json.dumps([once, other])) == 1.0  # parallel calls with other values
    assert score(json.dumps([once, once])) == 0.5


def test_hermes_calls_are_read():
    output = '<tool_call>\n{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}\n</tool_call>'
    assert parse_calls(output) == [{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}]
    assert score(output) == 1.0


def test_tools_listed_in_the_prompt_are_used_and_not_taken_as_evidence():
    tool = {
        "name": "set_unit",
        "parameters": {"properties": {"unit": {"type": "string", "description": "e.g. kelvin"}, "n": {"default": 3}}},
    }
    prompt = tool_prompt([{"type": "function", "function": tool}], "json") + "\nuser: set the unit please"
    reward = Grounding(names=False)
    assert reward.score(prompt, call("set_unit", unit="kelvin")) == 0.0  # only the tool listing says kelvin
    assert reward.score(prompt, call("set_unit", n=3)) == 1.0  # its default, read from the listing


def test_bad_tools_are_early_errors():
    with pytest.raises(TypeError, match="tools must be a list"):
        Grounding("calculate_triangle_area")
    with pytest.raises(ValueError, match=r"tools\[0\] has no function name"):
        Grounding([{"parameters": {}}])


def test_grounding_pickles_and_is_exported():
    reward = pickle.loads(pickle.dumps(Grounding([TRIANGLE])))
    assert reward.score(QUESTION, call(base=10, height=5)) == 1.0
    assert sd.rewards.Grounding is Grounding


def test_best_of_n_with_grounding_over_a_tool_call_constraint(tiny):
    spec = sd.tool_calls([TRIANGLE], tool_choice="required", format="json")
    search = sd.BestOfN(n=4, reward=Grounding([TRIANGLE]), sample=sd.Sample(temperature=1.0, seed=0))
    out = sd.generate(tiny, QUESTION, constraint=spec, search=search, max_tokens=60)
    finished = [h for h in out.hypotheses if h.finish_reason == "stop"]
    for h in finished:
        assert h.score == Grounding([TRIANGLE]).score(tiny.decode(tiny.encode(QUESTION)), h.text)
    assert [h.score for h in finished] == sorted((h.score for h in finished), reverse=True)


# --- the server's "reward": "grounding" --------------------------------------------------------


def test_the_server_grounding_reward_is_grounding_with_a_likelihood_tie_break(tiny):
    from searchdec.server import searches

    spec = searches.build({"algorithm": "best_of_n", "reward": "grounding"}, searches.SearchContext(1, tiny))
    terms = spec.reward.terms
    assert [type(r) for _, r in terms] == [Grounding, sd.rewards.MeanLogprob]
    assert terms[0][0] == 1.0 and terms[1][0] < 0.05 and terms[0][1].tools is None  # tools read from the prompt


def test_an_unknown_server_reward_is_a_400_naming_search(tiny):
    from searchdec.server import searches
    from searchdec.server.errors import APIError

    with pytest.raises(APIError, match="grounding") as caught:
        searches.build({"algorithm": "best_of_n", "reward": "grounded"}, searches.SearchContext(1, tiny))
    assert caught.value.status == 400 and caught.value.param == "search"


@pytest.mark.integration
def test_served_best_of_n_with_grounding_returns_the_best_grounded_call_first(smollm):
    openai = pytest.importorskip("openai")
    from live_server import LiveServer

    from searchdec.server import create_app

    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
    question = "What's the weather in Paris in celsius?"
    with LiveServer(create_app(sd.load("smollm2-135m"), "m", default_max_tokens=40)) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=600)
        r = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": question}], tools=[weather], tool_choice="required",
            parallel_tool_calls=False, n=2,
            extra_body={"search": {"algorithm": "best_of_n", "n": 4, "reward": "grounding", "seed": 0}},
        )  # fmt: skip
    scores = []
    for choice in r.choices:
        (tool_call,) = choice.message.tool_calls
        output = json.dumps([{"name": tool_call.function.name, "arguments": json.loads(tool_call.function.arguments)}])
        scores.append(Grounding([weather]).score(question, output))
    assert scores == sorted(scores, reverse=True)
