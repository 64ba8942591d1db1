"""Constraints beyond the grammar over HTTP: JSON Schema keywords enforced by checks (`uniqueItems`,
`if`/`then`/`else`) in `response_format`, SQL requested with `structured_outputs.sql` (a Spider
`tables.json` entry, or a database the server was started with), refusals naming the field, and the
finish reason of an output no check lets finish ("length", with `finish_detail: "unsatisfied"`)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import httpx
import jsonschema
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
from fastapi.testclient import TestClient  # noqa: E402
from live_server import LiveServer  # noqa: E402
from tiny import tiny_model  # noqa: E402

import searchdec as sd  # noqa: E402
from searchdec.grammars.sql import spider_database  # noqa: E402

DATA = Path(__file__).parent / "data"
STORE = str(DATA / "sqlite" / "department_store.sqlite")
TABLES = {entry["db_id"]: entry for entry in json.loads((DATA / "spider" / "tables.json").read_text())}
ORDER = {  # uniqueItems and if/then/else: the keywords a grammar cannot hold, enforced by checks
    "type": "object",
    "properties": {
        "size": {"enum": ["small", "large"]},
        "toppings": {"type": "array", "items": {"enum": ["ham", "egg", "corn"]}, "uniqueItems": True, "maxItems": 3},
        "count": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["size", "toppings", "count"],
    "additionalProperties": False,
    "if": {"properties": {"size": {"const": "large"}}},
    "then": {"properties": {"count": {"maximum": 2}}},
    "else": {"properties": {"count": {"minimum": 3}}},
}
NEVER = {"type": "array", "items": {"type": "boolean"}, "minItems": 3, "maxItems": 3, "uniqueItems": True}


def chat(**fields) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 8, **fields}


@pytest.fixture(scope="module")
def app_client():
    from searchdec.server import create_app

    with TestClient(create_app(tiny_model(), "tiny", databases={"store": STORE})) as client:
        yield client


# --- SQL requests ------------------------------------------------------------------------------------


def explains(entry_or_path, query: str) -> bool:
    connection = sqlite3.connect(entry_or_path) if isinstance(entry_or_path, str) else spider_database(entry_or_path)
    try:
        connection.execute("EXPLAIN " + query)
    except sqlite3.Error:
        return False
    return True


@pytest.mark.parametrize(
    "sql", [{"tables": TABLES["concert_singer"]}, {"database": "store"}, {"database": "store", "checks": False}]
)
def test_sql_can_be_requested_by_tables_entry_or_database_name(app_client, sql):
    response = app_client.post("/v1/chat/completions", json=chat(structured_outputs={"sql": sql}, max_tokens=40))
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    if choice["finish_reason"] == "stop":  # a random model rarely finishes; when it does, the query compiles
        assert explains(STORE if "database" in sql else sql["tables"], choice["message"]["content"])


def test_the_sql_request_means_what_sd_sql_means():
    by_request = sd.constraint_for(structured_outputs={"sql": {"database": "store"}}, databases={"store": STORE})
    assert by_request == sd.sql(db=STORE)
    assert sd.constraint_for(structured_outputs={"sql": {"tables": TABLES["tvshow"], "checks": False}}) == sd.sql(
        tables=TABLES["tvshow"], checks=False
    )


BROKEN_ENTRY = {**TABLES["tvshow"], "column_names_original": [[-1, "*"], [7, "x"]]}


@pytest.mark.parametrize(
    ("sql", "param", "message"),
    [
        ({"database": "shop"}, "structured_outputs.sql.database", "unknown database 'shop'; the databases here: store"),
        ({"tables": BROKEN_ENTRY}, "structured_outputs.sql.tables", "names table 7"),
        ({"tables": {"table_names_original": []}}, "structured_outputs.sql.tables", "column_names_original"),
        ({"database": "store", "tables": TABLES["tvshow"]}, "structured_outputs.sql", "exactly one of tables"),
        ({}, "structured_outputs.sql", "exactly one of tables, database; got none"),
        ({"database": "store", "checks": "yes"}, "structured_outputs.sql.checks", "valid boolean"),
        ({"tables": "tvshow"}, "structured_outputs.sql.tables", "valid dictionary"),
        ({"db": "store"}, "structured_outputs.sql.db", "Unrecognized request argument"),
    ],
)
def test_a_bad_sql_request_is_a_400_naming_the_field(app_client, sql, param, message):
    response = app_client.post("/v1/chat/completions", json=chat(structured_outputs={"sql": sql}))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"], error


def test_a_server_started_with_an_unreadable_database_fails_at_start(tmp_path):
    from searchdec.server import create_app

    (tmp_path / "text.sqlite").write_text("not a database")
    with pytest.raises(sd.DatabaseNotFoundError, match="text.sqlite"):
        create_app(tiny_model(), "tiny", databases={"t": str(tmp_path / "text.sqlite")})
    with pytest.raises(sd.DatabaseNotFoundError, match="no SQLite database file"):
        create_app(tiny_model(), "tiny", databases={"t": str(tmp_path / "missing.sqlite")})


def test_the_database_flag_names_each_file():
    from searchdec.cli import _databases

    assert _databases(["shop=/a/b.sqlite", "/x/store.db"]) == {"shop": "/a/b.sqlite", "store": "/x/store.db"}
    with pytest.raises(ValueError, match="twice"):
        _databases(["a=/x", "a=/y"])
    with pytest.raises(ValueError, match="NAME=PATH"):
        _databases(["=/x"])


# --- checks' finish reason ------------------------------------------------------------------------------


def test_an_output_no_check_lets_finish_is_length_with_the_detail(app_client):
    """Three distinct booleans: the grammar allows three booleans, uniqueItems none of them."""
    body = chat(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": NEVER}}, max_tokens=24)
    choice = app_client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert (choice["finish_reason"], choice["finish_detail"]) == ("length", "unsatisfied")
    body = {key: value for key, value in body.items() if key not in ("messages", "response_format")}
    body["structured_outputs"] = {"json": NEVER}
    text = app_client.post("/v1/completions", json={**body, "prompt": "x"}).json()["choices"][0]
    assert (text["finish_reason"], text["finish_detail"]) == ("length", "unsatisfied")


def test_a_streamed_unsatisfied_output_ends_the_same_way(app_client):
    body = chat(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": NEVER}}, max_tokens=24)
    with app_client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    last = [c for e in events for c in e["choices"] if c["finish_reason"] is not None]
    assert [(c["finish_reason"], c["finish_detail"]) for c in last] == [("length", "unsatisfied")]


def test_an_ordinary_finish_has_no_detail(app_client):
    """Greedy, so the two tokens are the same each run (sampled, the tiny model may say <eos> first)."""
    choice = app_client.post("/v1/chat/completions", json=chat(max_tokens=2, temperature=0)).json()["choices"][0]
    assert choice["finish_reason"] == "length" and "finish_detail" not in choice


# --- the real model, through the official client ---------------------------------------------------------


@pytest.fixture(scope="module")
def real_client():
    from searchdec.server import create_app

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with LiveServer(create_app(sd.load("smollm2-135m"), "smollm2-135m", databases={"store": STORE})) as live:
        yield openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=600)


@pytest.mark.integration
def test_unique_items_and_if_then_else_hold_through_the_openai_client(real_client):
    response = real_client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Order a large pizza with ham and egg, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}},
        max_tokens=60,
        n=3,
        temperature=1.0,
        seed=3,
    )
    finished = [c for c in response.choices if c.finish_reason == "stop"]
    assert finished, [c.finish_reason for c in response.choices]
    for choice in finished:
        jsonschema.validate(json.loads(choice.message.content), ORDER)


@pytest.mark.integration
def test_sql_over_a_database_the_server_was_started_with_compiles(real_client):
    response = real_client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Write an SQLite query listing the names of all products."}],
        max_tokens=48,
        temperature=0,  # greedy: OpenAI's default temperature 1 samples, and a sample may end unsatisfied
        extra_body={"structured_outputs": {"sql": {"database": "store"}}},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice
    assert explains(STORE, choice.message.content), choice.message.content


def test_http_errors_for_sql_name_the_field_over_a_live_socket():
    """The same refusal through a real socket and the openai client's error type."""
    from searchdec.server import create_app

    with LiveServer(create_app(tiny_model(), "tiny")) as live:
        response = httpx.post(
            live.url + "/v1/chat/completions", json=chat(structured_outputs={"sql": {"database": "store"}}), timeout=60
        )
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "go"}], max_tokens=4,
                extra_body={"structured_outputs": {"sql": {"database": "store"}}},
            )  # fmt: skip
    assert response.status_code == 400 and "start it with --database" in response.json()["error"]["message"]
    assert caught.value.param == "structured_outputs.sql.database"
