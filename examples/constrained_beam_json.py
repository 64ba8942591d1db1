"""Constrained beam search for JSON: every hypothesis validates against the schema, ranked by beam score.

Run:  python examples/constrained_beam_json.py   (writes beam_trace.html: open it in a browser)
"""

import json

import searchdec as sd

model = sd.load("smollm2-135m")
schema = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "country": {"type": "string"},
        "population_millions": {"type": "number"},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}
messages = [{"role": "user", "content": "Describe Paris as JSON with city, country and population_millions."}]
out = sd.generate(model, messages, max_tokens=60, constraint=sd.json_schema(schema), search=sd.Beam(4, num_return=4))
for h in out.hypotheses:
    print(f"{h.score:8.4f}  {h.finish_reason:6}  {json.loads(h.text) if h.finish_reason == 'stop' else h.text}")
print(out.stats)
out.trace.save("beam_trace.html")
