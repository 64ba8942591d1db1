"""`searchdec bench NAME`: the project's benchmarks, runnable on a user's own machine (GPU included), as
`vllm bench` is. Each prints ours beside the peer measured in the same run, as the README's tables do:

- `decode`: greedy decoding vs `transformers.generate`, single prompts and a batch, and JSON-Schema-
  constrained decoding beside unconstrained (searchdec/bench/decode.py);
- `grammars`: searchdec's masks vs raw llguidance, outlines-core and XGrammar (those installed) on
  JSONSchemaBench schemas (searchdec/bench/grammars.py);
- `search`: `sd.Beam(4)` vs transformers `generate(num_beams=4)`, one prompt at a time; in full also tokens
  forwarded per returned token for every search, and Countdown puzzles solved (searchdec/bench/search.py);
- `speculative`: the lossless speculative methods vs target-only greedy (searchdec/bench/speculative.py).

By default a bench runs its quick rows (a minute or a few); `--full` runs what benchmarks/NAME.py runs.
Every other option goes to the bench (`searchdec bench decode --device cuda --repeats 5`).
The transformers side of every bench is timed by one helper, searchdec/bench/peers.py.
"""

from __future__ import annotations

import importlib

BENCHES = {
    "decode": "greedy decoding vs transformers.generate, and constrained decoding's cost",
    "grammars": "mask time, time to first mask and coverage vs raw llguidance, outlines-core, XGrammar",
    "search": "Beam(4) vs transformers generate(num_beams=4); in full, prefix reuse and puzzles per search",
    "speculative": "lossless speculative decoding vs target-only greedy",
}


def run(name: str, options: list[str], full: bool = False) -> int:
    """Run bench `name` with `options` (its own command-line flags), quick unless `full`."""
    if name not in BENCHES:
        raise ValueError(f"no bench named {name!r}; the benches are: {', '.join(BENCHES)}")
    module = importlib.import_module(f"searchdec.bench.{name}")
    return module.main(list(options) if full else ["--quick", *options])
