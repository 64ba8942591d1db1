"""Constrained beams follow the closing budget sampling has (search/budget.py): with `max_tokens`, a
random-weight model's beams close their JSON instead of being cut; without room even for the shortest
completion they end with "length"; unconstrained beams are unchanged."""

from __future__ import annotations

import json

import jsonschema
import pytest

import searchdec as sd

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["name", "tags"],
}


def shortest(model, spec) -> int:
    return spec.compile(model).start().closing(10_000)[0]


@pytest.mark.parametrize("width", [1, 3])
def test_constrained_beams_close_within_max_tokens(tiny, width):
    spec = sd.json_schema(SCHEMA)
    floor = shortest(tiny, spec)
    for max_tokens in (floor, floor + 5, floor + 30):
        out = sd.generate(
            tiny, "x", max_tokens=max_tokens, constraint=spec, search=sd.Beam(width=width, num_return=width)
        )
        assert out.hypotheses and len(out.hypotheses) <= width  # at the floor, few ways to close remain
        for h in out.hypotheses:
            assert h.finish_reason == "stop", (max_tokens, h.text)
            assert len(h.tokens) <= max_tokens
            jsonschema.validate(json.loads(h.text), SCHEMA)


def test_beams_without_room_to_close_end_with_length(tiny):
    spec = sd.json_schema(SCHEMA)
    out = sd.generate(tiny, "x", max_tokens=shortest(tiny, spec) - 1, constraint=spec, search=sd.Beam(width=2))
    assert out.finish_reason == "length"


def test_a_beam_whose_candidates_cannot_close_follows_its_closing_walk(tiny):
    spec = sd.regex(r"\[(item-[a-z]+, )*item-[a-z]+\]")
    floor = shortest(tiny, spec)
    out = sd.generate(tiny, "x", max_tokens=floor, constraint=spec, search=sd.Beam(width=2, num_return=2))
    assert [h.finish_reason for h in out.hypotheses] == ["stop", "stop"]
