"""Documents for validity benchmarks and tests: `shuffled` moves every object's keys (the walks of
benchmarks/json_validity.py and tests/test_jsonschemabench.py, the property tests of tests/test_checks_json.py)."""

from __future__ import annotations

import random
from typing import Any


def shuffled(value: Any, rng: random.Random) -> Any:
    """`value` with the properties of every object, at every depth, in an order drawn from `rng`."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {key: shuffled(item, rng) for key, item in items}
    if isinstance(value, list):
        return [shuffled(item, rng) for item in value]
    return value
