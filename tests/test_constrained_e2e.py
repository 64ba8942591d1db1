"""End to end with the real default model: constrained generations finish and validate.

JSON: JSONSchemaBench schemas from the test sample, greedy and sampled, with a budget that leaves room
to close: every output finishes ("stop") and validates with jsonschema (none is cut mid-object).
SQL: Spider questions with the schema-specialized grammar; every query parses as SQL and names only
the database's tables and columns (checked against SQLite's own parser with EXPLAIN on an empty
database built from tables.json: what it refuses is listed, and must be a column-scope error, the
one thing a context-free grammar cannot rule out). The full runs are benchmarks/json_e2e.py and
benchmarks/sql.py.
"""

import json
import re
import sqlite3
import sys
from pathlib import Path

import jsonschema
import pytest

import searchdec as sd
from searchdec.grammars.sql import spider_database

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from json_e2e import prompt  # noqa: E402
from sql import messages  # noqa: E402

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent / "data"
SCHEMAS = [
    "BFCL_simple_107.json",
    "Glaiveai2K---calculate_area_27dec4dc.json",
    "Github_trivial---o17657.json",
    "JME_14.json",
    "MCPspec---ListRootsResult.json",
    "Snowplow---sp_11_Normalized.json",
]


@pytest.mark.parametrize("name", SCHEMAS)
def test_json_schema_outputs_finish_and_validate(smollm, name):
    schema = json.loads((DATA / "jsonschemabench" / name).read_text())["schema"]
    constraint = sd.json_schema(schema).compile(smollm)
    assert constraint.start().closing(96) is not None, "the budget leaves room to close"
    for search in (sd.Greedy(), sd.Sample(temperature=1.0, seed=0)):
        out = sd.generate(smollm, prompt(schema), max_tokens=96, constraint=constraint, search=search)
        assert out.finish_reason == "stop", out.text
        jsonschema.validators.validator_for(schema)(schema).validate(json.loads(out.text))


def test_a_tight_budget_closes_the_document_instead_of_cutting_it(smollm):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "hobbies": {"type": "array", "items": {"type": "string"}},
            "bio": {"type": "string"},
            "age": {"type": "integer"},
        },
        "required": ["name", "hobbies", "bio", "age"],
    }
    ask = [{"role": "user", "content": "Describe a fictional person as JSON: name, a long list of hobbies, bio, age."}]
    for max_tokens in (40, 48):
        out = sd.generate(smollm, ask, max_tokens=max_tokens, constraint=sd.json_schema(schema))
        assert out.finish_reason == "stop" and len(out.tokens) <= max_tokens, out.text
        jsonschema.validate(json.loads(out.text), schema)


SCOPE_ERROR = re.compile(r"no such column|ambiguous column name")


def test_spider_queries_compile_against_their_schema(smollm):
    gold = json.loads((DATA / "spider" / "dev_sample.json").read_text())
    entries = {e["db_id"]: e for e in json.loads((DATA / "spider" / "tables.json").read_text())}
    refused, cut = [], []
    for item in gold[::10]:
        entry = entries[item["db_id"]]
        out = sd.generate(smollm, messages(entry, item["question"]), max_tokens=64, constraint=sd.sql(tables=entry))
        if out.finish_reason != "stop":
            cut.append(out.text)  # a query cut by max_tokens is not a query: never checked as one
            continue
        try:
            spider_database(entry).execute("EXPLAIN " + out.text)
        except sqlite3.Error as error:
            refused.append((out.text, str(error)))
    assert all(SCOPE_ERROR.search(error) for _, error in refused), refused
    assert len(refused) <= len(gold[::10]) // 2, refused
    assert len(cut) <= 1, cut  # budget steering closes nearly every query within max_tokens
