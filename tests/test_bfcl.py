"""The BFCL benchmark's AST checker (benchmarks/bfcl.py) and its in-process constrained run on the
bundled subset (tests/data/bfcl): every finished constrained output that makes calls parses into calls
whose names exist and whose arguments validate."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bfcl  # noqa: E402

DATA = ROOT / "tests" / "data" / "bfcl"


def test_bfcl_types_map_to_json_schema():
    schema = bfcl.to_json_schema(
        {
            "type": "dict",
            "properties": {
                "x": {"type": "float"},
                "t": {"type": "tuple", "items": {"type": "any"}},
                "type": {"type": "string", "optional": True},
            },
        }  # fmt: skip
    )
    assert schema == {
        "type": "object",
        "properties": {"x": {"type": "number"}, "t": {"type": "array", "items": {}}, "type": {"type": "string"}},
    }


def test_checker_accepts_the_expected_call_and_rejects_near_misses():
    case = bfcl.load_cases(DATA, "simple_python", 1)[0]  # calculate_triangle_area(base=10, height=5[, unit])
    right = {"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}
    assert bfcl.case_correct("simple_python", [right], case)
    assert bfcl.case_correct(
        "simple_python", [{**right, "arguments": {"base": 10, "height": 5, "unit": "Units"}}], case
    )
    assert not bfcl.case_correct("simple_python", [{**right, "arguments": {"base": 10, "height": 6}}], case)
    assert not bfcl.case_correct("simple_python", [{**right, "arguments": {"base": 10}}], case)  # required missing
    assert not bfcl.case_correct("simple_python", [{**right, "arguments": {"base": 10, "height": 5, "x": 1}}], case)
    assert not bfcl.case_correct("simple_python", [{**right, "name": "other"}], case)
    assert not bfcl.case_correct("simple_python", [right, right], case)
    assert not bfcl.case_correct("simple_python", None, case)


def test_parallel_calls_match_in_any_order():
    case = bfcl.load_cases(DATA, "parallel_multiple", 1)[0]
    calls = [
        {"name": "math_toolkit.product_of_primes", "arguments": {"count": 5}},
        {
            "name": "math_toolkit.sum_of_multiples",
            "arguments": {"lower_limit": 1, "upper_limit": 1000, "multiples": [3, 5]},
        },  # fmt: skip
    ]
    assert bfcl.case_correct("parallel_multiple", calls, case)
    assert not bfcl.case_correct("parallel_multiple", calls[:1], case)


def test_irrelevance_is_correct_without_calls():
    case = bfcl.load_cases(DATA, "irrelevance", 1)[0]
    assert bfcl.case_correct("irrelevance", None, case)
    assert not bfcl.case_correct("irrelevance", [{"name": "determine_body_mass_index", "arguments": {}}], case)


def test_free_text_parsing():
    assert bfcl.parse_free_text('```json\n[{"name": "f", "arguments": {"a": 1}}]\n```') == [
        {"name": "f", "arguments": {"a": 1}}
    ]
    assert bfcl.parse_free_text('{"name": "f", "arguments": {}}') == [{"name": "f", "arguments": {}}]
    assert bfcl.parse_free_text("The answer is 4.") is None
    assert bfcl.parse_free_text('[{"name": "f"') is None


@pytest.mark.integration
def test_constrained_calls_all_parse_and_validate(smollm):
    outcomes = []
    for category in bfcl.CATEGORIES:
        arm = "auto" if category == "irrelevance" else "required"
        cases = bfcl.load_cases(DATA, category, 1 if arm == "auto" else 2)  # a plain answer runs to max_tokens
        outcomes += bfcl.run_inprocess(smollm, category, cases, arm, max_tokens=64)
    finished = [o for o in outcomes if o.finish_reason == "stop"]
    assert finished
    for outcome in finished:
        if outcome.attempted:
            assert outcome.calls and outcome.valid, (outcome.case_id, outcome.text, outcome.why)
