"""Budget-aware completion: with `max_tokens`, constrained output is steered to close its structure
in the tokens left instead of being cut mid-object; when the budget cannot hold even the shortest
completion, the output ends with "length" and is never reported as finished."""

import json

import jsonschema
import pytest

import searchdec as sd

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "notes": {"type": "string"},
    },
    "required": ["name", "tags", "notes"],
}


def shortest(model, spec) -> int:
    found = spec.compile(model).start().closing(10_000)
    assert found is not None
    return found[0]


def test_closing_walk_reaches_an_accepting_state_in_the_tokens_it_counts(tiny):
    state = sd.json_schema(SCHEMA).compile(tiny).start()
    steps, _ = state.closing(1000)
    walked = 0
    while not state.accepting:
        _, token = state.closing(1000)
        state = state.advance(token)
        walked += 1
    assert walked + (0 if state.finished else 1) == steps  # the walk's tokens, then end-of-sequence if needed
    jsonschema.validate(json.loads(tiny.decode(list(_walk_tokens(tiny, SCHEMA)))), SCHEMA)


def _walk_tokens(model, schema):
    state = sd.json_schema(schema).compile(model).start()
    while not state.accepting:
        _, token = state.closing(1000)
        state = state.advance(token)
        yield token


def test_closing_is_none_when_the_limit_is_below_the_shortest_completion(tiny):
    state = sd.json_schema(SCHEMA).compile(tiny).start()
    steps, _ = state.closing(1000)
    assert state.closing(steps) is not None
    assert state.closing(steps - 1) is None


@pytest.mark.parametrize("search", [sd.Greedy(), sd.Sample(temperature=1.0, n=4, seed=3)], ids=["greedy", "sample"])
def test_a_random_model_is_steered_to_close_json_within_max_tokens(tiny, search):
    # A random-weight model never closes a string by itself: without steering, every output is cut.
    spec = sd.json_schema(SCHEMA)
    floor = shortest(tiny, spec)
    for max_tokens in (floor, floor + 7, floor + 40):
        out = sd.generate(tiny, "x", max_tokens=max_tokens, constraint=spec, search=search, jump_forward=False)
        for h in out.hypotheses:
            assert h.finish_reason == "stop", (max_tokens, h.text)
            assert len(h.tokens) <= max_tokens
            jsonschema.validate(json.loads(h.text), SCHEMA)


def test_without_room_to_close_the_output_ends_with_length(tiny):
    spec = sd.json_schema(SCHEMA)
    out = sd.generate(tiny, "x", max_tokens=shortest(tiny, spec) - 1, constraint=spec, search=sd.Sample(n=4, seed=0))
    assert {h.finish_reason for h in out.hypotheses} == {"length"}


def test_steering_also_holds_with_jump_forward_and_regex(tiny):
    spec = sd.regex(r"\[(item-[a-z]+, )*item-[a-z]+\]")
    floor = shortest(tiny, spec)
    out = sd.generate(tiny, "x", max_tokens=floor + 5, constraint=spec, search=sd.Sample(n=6, seed=1))
    for h in out.hypotheses:
        assert h.finish_reason == "stop" and len(h.tokens) <= floor + 5
        assert h.text.startswith("[item-") and h.text.endswith("]")


def test_unconstrained_generation_is_not_steered(tiny):
    out = sd.generate(tiny, "x", max_tokens=12, search=sd.Sample(n=3, seed=0))
    assert all(h.finish_reason == "length" and len(h.tokens) == 12 for h in out.hypotheses)
