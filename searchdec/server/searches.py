"""The `search` request extension: a registry from algorithm names to search specs.

A request names an algorithm and its parameters side by side:
`"search": {"algorithm": "sample", "temperature": 0.7, "top_p": 0.9}`. Each entry checks its own
parameters (an unknown one is a 400 naming it) and builds the spec `sd.generate` takes. Entries
marked `stepwise` decode inside the server's shared continuous batch (one token per hypothesis per
step: greedy, sampling); an algorithm that needs the whole search loop (beam, best-of-N) registers
with `stepwise=False` and is run as one `sd.generate` call by the engine's worker.
Without a `search` field, `temperature` chooses: below 1e-5 (0 included) is greedy, anything else
samples (OpenAI's default temperature is 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from searchdec.search.sampling import Greedy, Sample
from searchdec.server.errors import bad_request


@dataclass(frozen=True)
class SearchEntry:
    name: str
    params: tuple[str, ...]  # the parameters it accepts besides "algorithm"
    build: Callable[[dict[str, Any], int], Any]  # (parameters, n) -> a search spec
    stepwise: bool = True
    description: str = ""


REGISTRY: dict[str, SearchEntry] = {}
MIN_TEMPERATURE = 1e-5  # below it, logits / temperature overflow to inf (found by the fuzzer at 1e-300)


def register(entry: SearchEntry) -> None:
    if entry.name in REGISTRY:
        raise ValueError(f"search algorithm {entry.name!r} is already registered")
    REGISTRY[entry.name] = entry


def build(spec: dict[str, Any], n: int):
    """The search spec for a request's `search` field (`{"algorithm": ..., **parameters}`)."""
    name = spec.get("algorithm")
    entry = REGISTRY.get(name)
    if entry is None:
        known = ", ".join(sorted(REGISTRY))
        raise bad_request(f"unknown search algorithm {name!r}; available: {known}", "search.algorithm")
    params = {k: v for k, v in spec.items() if k != "algorithm"}
    unknown = sorted(set(params) - set(entry.params))
    if unknown:
        accepted = ", ".join(entry.params) or "none"
        raise bad_request(
            f"search algorithm {name!r} has no parameter {', '.join(map(repr, unknown))}; it accepts: {accepted}",
            f"search.{unknown[0]}",
        )
    try:
        return entry.build(params, n)
    except (TypeError, ValueError) as error:
        raise bad_request(f"search {name!r}: {error}", "search") from None


def _greedy(params: dict, n: int) -> Greedy:
    return Greedy()  # n > 1 greedy hypotheses are identical; the engine decodes them side by side


def _sample(params: dict, n: int) -> Sample:
    for key, value in params.items():
        kind = int if key in ("top_k", "seed") else (int, float)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise TypeError(f"{key} must be a number, got {value!r}")
    top_k = params.get("top_k")
    if params.get("temperature") is not None and params["temperature"] < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be >= {MIN_TEMPERATURE} to sample; use the greedy algorithm for arg-max")
    return Sample(
        temperature=float(params.get("temperature", 1.0)),
        top_k=None if top_k in (None, -1, 0) else top_k,
        top_p=float(params.get("top_p", 1.0)),
        min_p=float(params.get("min_p", 0.0)),
        n=n,
        seed=params.get("seed"),
    )


register(SearchEntry("greedy", (), _greedy, description="the most probable token at each step"))
register(
    SearchEntry(
        "sample",
        ("temperature", "top_p", "top_k", "min_p", "seed"),
        _sample,
        description="ancestral sampling with temperature, top-k, top-p and min-p, seeded",
    )
)
