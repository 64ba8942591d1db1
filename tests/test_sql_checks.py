"""`sd.sql(db=...)` / `sd.sql(tables=...)` check their outputs beyond the grammar (grammars/sql_checks.py):
SQLite's word boundaries, and everything `EXPLAIN` checks on the schema (names in scope, aliases, GROUP BY
and aggregate rules), so every finished query compiles on its database."""

import json
import sqlite3
from pathlib import Path

import pytest

import searchdec as sd
from searchdec.grammars.base import Verdict
from searchdec.grammars.sql import spider_database, sql

DATA = Path(__file__).parent / "data"
GOLD = json.loads((DATA / "spider" / "dev_sample.json").read_text())
TABLES = {entry["db_id"]: entry for entry in json.loads((DATA / "spider" / "tables.json").read_text())}
DEPARTMENT_STORE = DATA / "sqlite" / "department_store.sqlite"
CONCERT = TABLES["concert_singer"]


def check_state(spec, text: str, split: int = 1):
    """The SQL check's state after `text`, fed `split` characters at a time (no grammar beside it)."""
    (check,) = spec.checks()
    state = check.start()
    for i in range(0, len(text), split):
        state = state.feed(text[i : i + split].encode(), None)
    return state


def walk(model, spec, text):
    """The compiled constraint's State after `text` as the model's tokenizer splits it (None: refused)."""
    try:
        return spec.compile(model).start().advance_many(model.encode(text, add_special_tokens=False))
    except ValueError:
        return None


def compiles(entry, query) -> bool:
    try:
        spider_database(entry).execute("EXPLAIN " + query)
    except sqlite3.Error:
        return False
    return True


@pytest.mark.parametrize("split", [1, 3, 7])
def test_every_gold_query_passes_the_check_in_any_split(split):
    for item in GOLD:
        state = check_state(sql(tables=TABLES[item["db_id"]]), item["query"], split)
        assert state.verdict is Verdict.OK, item["query"]


def test_check_agrees_with_explain_on_complete_queries():
    spec = sql(tables=CONCERT)
    queries = [
        "SELECT Name FROM singer",
        "SELECT T2.Theme FROM singer AS T1",  # T2 is not in scope
        "SELECT T2.Theme FROM singer AS T1 JOIN concert AS T2 ON T1.Singer_ID = T2.Stadium_ID",
        "SELECT Name FROM singer GROUP BY count(*)",  # aggregate in GROUP BY
        "SELECT Name FROM singer WHERE count(*) > 1",  # aggregate in WHERE
        "SELECT Name, Age FROM singer UNION SELECT Name FROM singer",  # column counts differ
        "SELECT Name FROM singer AS T1 JOIN concert AS T1",  # an alias defined twice
        "SELECT Name FROM singer ORDER BY 3",  # ORDER BY term out of range
        "SELECT count(*) FROM singer WHERE Age > 20",
    ]
    for query in queries:
        ok = check_state(spec, query).verdict is Verdict.OK
        assert ok == compiles(CONCERT, query), query


def test_glued_words_are_violated_where_they_glue():
    spec = sql(tables=CONCERT)
    for text in [
        "SELECT Name FROM singer WHERE Age > 20 ANDName",  # the ANDSourceAirport
        "SELECT Name FROM singer EXCEPTSELECT",
        "SELECT NameFROM",
        "SELECT Name FROM singer LIMIT 1OFFSET",
    ]:
        assert check_state(spec, text).verdict is Verdict.VIOLATED, text
    # Punctuation separates words, as it does for SQLite; made-up names are free only after AS.
    fine = ["SELECT count(*)FROM singer", "SELECT Name AS singer_name FROM singer", "SELECT T1.Name FROM singer AS T1"]
    for text in fine:
        assert check_state(spec, text).verdict is Verdict.OK, text


def test_scope_errors_are_final_when_the_from_clause_is_closed():
    spec = sql(tables=CONCERT)
    # Before WHERE a JOIN may still bring T2 in: not OK to end, not dead. WHERE closes FROM as written
    # (no known word extends it); a word that may still grow is read once it ends.
    assert check_state(spec, "SELECT T2.Theme FROM singer AS T1").verdict is Verdict.UNDECIDED
    assert check_state(spec, "SELECT T2.Theme FROM singer AS T1 WHERE").verdict is Verdict.VIOLATED
    assert check_state(spec, "SELECT Name FROM singer WHERE T1.Age > 1 AND ").verdict is Verdict.VIOLATED
    # Inside a subquery or an ON clause the outer statement is not closed yet.
    assert check_state(spec, "SELECT Name FROM singer WHERE Singer_ID IN (SELECT Singer_ID FROM").verdict is not (
        Verdict.VIOLATED
    )
    # Keywords inside strings and quoted names are not words.
    assert check_state(spec, "SELECT Name FROM singer WHERE Name = 'x WHERE yANDz'").verdict is Verdict.OK


@pytest.mark.integration
def test_constraint_refuses_dead_queries_and_eos_before_it_compiles(smollm):
    spec = sql(tables=CONCERT)
    assert walk(smollm, spec, "SELECT T2.Theme FROM singer AS T1").accepting is False
    assert walk(smollm, spec, "SELECT T2.Theme FROM singer AS T1 JOIN concert AS T2").accepting is True
    dead = walk(smollm, spec, "SELECT T2.Theme FROM singer AS T1 WHERE")
    assert dead is None or dead.dead
    for item in GOLD[:20]:
        state = walk(smollm, sql(tables=TABLES[item["db_id"]]), item["query"])
        assert state is not None and state.accepting, item["query"]


def test_checks_are_on_with_a_schema_and_off_on_request():
    assert len(sql(tables=CONCERT).checks()) == 1
    assert len(sql(DEPARTMENT_STORE).checks()) == 1
    assert sql(tables=CONCERT, checks=False).checks() == ()
    assert sql().checks() == ()  # no schema: nothing to compile against
    with pytest.raises(TypeError, match="checks"):
        sql(tables=CONCERT, checks="yes")


def test_database_file_schema_is_used_for_explain():
    spec = sql(DEPARTMENT_STORE)
    good = "SELECT T1.customer_name FROM Customers AS T1 JOIN Customer_Orders AS T2 ON T1.customer_id = T2.customer_id"
    assert check_state(spec, good).verdict is Verdict.OK
    assert check_state(spec, "SELECT order_id FROM Customers WHERE ").verdict is Verdict.VIOLATED


@pytest.mark.integration
def test_greedy_spider_queries_that_finish_compile(smollm):
    """Real model, real Spider schemas: every query greedy decoding finishes compiles under EXPLAIN."""
    items = GOLD[::12][:4]
    for item in items:
        entry = TABLES[item["db_id"]]
        prompt = [{"role": "user", "content": f"Write one SQLite query that answers: {item['question']}"}]
        out = sd.generate(smollm, prompt, max_tokens=48, constraint=sql(tables=entry))
        assert out.finish_reason in ("stop", "length", "unsatisfied"), out.finish_reason
        if out.finish_reason == "stop":
            assert compiles(entry, out.text.strip()), out.text


def test_a_range_name_defined_twice_in_from_is_final_at_the_next_comma_or_join():
    """The degenerate `FROM Documents, Documents, ...` the model can loop on ends at the second comma."""
    spec = sql(tables=CONCERT)
    for text in [
        "SELECT * FROM singer, singer,",
        "SELECT Theme FROM concert AS T1 JOIN stadium AS T1 JOIN ",  # both have Stadium_ID
        "SELECT Name FROM singer JOIN singer LEFT JOIN ",
        "SELECT Name FROM singer AS T1 JOIN singer_in_concert AS T2 ON Singer_ID = Singer_ID,",  # ambiguous ON: final
    ]:
        assert check_state(spec, text).verdict is Verdict.VIOLATED, text
    for text in [
        "SELECT * FROM singer AS T1, singer AS T2,",
        "SELECT T1.Name FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.Singer_ID = T2.Singer_ID JOIN ",
        "SELECT Name FROM singer WHERE Age > 1 AND Name IN (SELECT Name FROM singer, concert,",
        "SELECT Name, Age FROM singer GROUP BY Name, Age",  # commas after FROM's list is closed
    ]:
        assert check_state(spec, text).verdict is not Verdict.VIOLATED, text


def test_two_minus_signs_that_sqlite_reads_as_a_comment_are_violated():
    spec = sql(tables=CONCERT)
    assert check_state(spec, "SELECT Age - -1 FROM singer").verdict is not Verdict.VIOLATED
    assert check_state(spec, "SELECT Age --1 FROM singer").verdict is Verdict.VIOLATED
    assert check_state(spec, "SELECT Age /*").verdict is Verdict.VIOLATED


@pytest.mark.parametrize(
    ("text", "plan"),
    [
        ("SELECT Name, Song_Name", " FROM singer"),  # the table holding both names
        ("SELECT Song_Name FROM stadium", ", singer"),  # a name no table on the list holds
        ("SELECT Song_Name, Name FROM stadium", ""),  # joining singer would make Name ambiguous: no plan
        ("SELECT Theme, Capacity FROM concert", ", stadium"),  # the FROM list is still open: join the holder
        ("SELECT T1.Name, T2.Theme FROM singer AS T1 JOIN", " concert AS T2"),  # an alias the select list uses
        ("SELECT singer.Name, concert.Theme FROM singer", ", concert"),  # a table named as a qualifier
        ("SELECT * FROM (SELECT Name, Song_Name", " FROM singer)"),  # a subquery: its FROM, then its ")"
        ("SELECT * FROM (SELECT Song_Name FROM (SELECT * FROM concert WHERE Year = 1", "), singer)"),
        ("SELECT count(*) FROM stadium WHERE ", ""),  # an expression in progress: the grammar goes first
        ("SELECT Name FROM stadium WHERE Song_Name", ""),  # WHERE closed the FROM list: no plan
        ("SELECT count(*) FROM stadium", None),  # it compiles: nothing to plan
    ],
)
def test_the_closing_plan_writes_the_tables_the_names_need(text, plan):
    """A closing walk asks the check what to write where the grammar's shortest completion would not
    compile (`completion`): the FROM items each open SELECT's names need, then its ")"."""
    state = check_state(sql(tables=CONCERT), text)
    if plan is None and state.verdict is Verdict.OK:
        assert state.completion() is None
        return
    expected = plan if plan is not None else ""
    assert state.completion() == expected.encode()
    if expected:
        assert compiles(CONCERT, text + expected)
        assert check_state(sql(tables=CONCERT), text + expected).verdict is Verdict.OK
        # the plan is followed byte by byte: each step keeps the rest of it
        assert state.feed(expected[:3].encode(), None).completion() == expected[3:].encode()


@pytest.mark.integration
def test_queries_steered_to_close_in_a_tight_budget_finish_and_compile(smollm):
    """Real model, 32 tokens: where the grammar's shortest closing would not compile, the budget follows
    the check's plan, and a hypothesis that can close no more is backtracked from, not cut at
    `max_tokens` (before: 2 of these 5 finished)."""
    for item in GOLD[::5][:5]:
        entry = TABLES[item["db_id"]]
        prompt = [{"role": "user", "content": f"Write one SQLite query that answers: {item['question']}"}]
        out = sd.generate(smollm, prompt, max_tokens=32, constraint=sql(tables=entry))
        assert out.finish_reason == "stop", (out.finish_reason, out.text)
        assert compiles(entry, out.text.strip()), out.text
