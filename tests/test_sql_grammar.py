"""`sd.sql`: the SQLite SELECT grammar, specialized to a database's table and column names, accepts
real gold queries token by token through the real tokenizer and refuses names the schema lacks."""

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from searchdec.errors import ConstraintError
from searchdec.grammars.sql import DatabaseNotFoundError, sql

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent / "data"
GOLD = json.loads((DATA / "spider" / "dev_sample.json").read_text())
TABLES = {entry["db_id"]: entry for entry in json.loads((DATA / "spider" / "tables.json").read_text())}
DEPARTMENT_STORE = DATA / "sqlite" / "department_store.sqlite"


def ids(model, text):
    return model.encode(text, add_special_tokens=False)


def parses(model, spec, text) -> bool:
    """`text`, fed token by token as the model's tokenizer splits it, is a complete output of `spec`."""
    try:
        return spec.compile(model).start().advance_many(ids(model, text)).accepting
    except ValueError:
        return False


@pytest.mark.parametrize("db_id", sorted(TABLES))
def test_spider_gold_queries_parse_under_their_database_grammar(smollm, db_id):
    spec = sql(tables=TABLES[db_id])
    queries = [item["query"] for item in GOLD if item["db_id"] == db_id]
    assert queries
    failures = [query for query in queries if not parses(smollm, spec, query)]
    assert not failures, failures


def test_made_up_table_and_column_names_are_refused(smollm):
    spec = sql(tables=TABLES["concert_singer"])
    assert parses(smollm, spec, "SELECT name FROM singer WHERE age > 30")
    assert parses(smollm, spec, "select T1.Name from SINGER as T1 order by T1.age desc limit 1;")
    assert not parses(smollm, spec, "SELECT nickname FROM singer")  # no such column
    assert not parses(smollm, spec, "SELECT name FROM artist")  # no such table
    assert not parses(smollm, spec, "SELECT name FROM singer_tour")  # no such table, though it starts like one
    assert not parses(smollm, spec, "SELECT T1.salary FROM singer AS T1")
    assert not parses(smollm, spec, "SELECT name FROM singer WHERE")  # incomplete
    # A made-up name that splits into a real one plus a bare alias ("singer s") is refused too:
    # aliases need AS.
    assert not parses(smollm, spec, "SELECT name FROM singers")
    assert not parses(smollm, spec, "SELECT names FROM singer")
    assert parses(smollm, spec, "SELECT name AS names FROM singer AS T1")
    # Qualifiers are real tables or the aliases T1..T9, so a made-up qualifier cannot appear.
    assert parses(smollm, spec, "SELECT singer.name, T2.Year FROM singer JOIN concert AS T2")
    assert not parses(smollm, spec, "SELECT s.name FROM singer AS s")
    assert not parses(smollm, spec, "SELECT artist.name FROM singer")
    # SQLite folds case in ASCII only: a long s ("ſ") or Kelvin sign is not an s or a k.
    assert parses(smollm, spec, "sElEcT NAME from SINGER as t1")
    assert not parses(smollm, spec, "SELECT name FROM singer Aſ T1")
    assert not parses(smollm, spec, "ſELECT name FROM singer")
    # Shapes SQLite refuses whatever the schema: columns without FROM, functions with no arguments.
    assert not parses(smollm, spec, "SELECT name WHERE age > 3")
    assert not parses(smollm, spec, "SELECT total() FROM singer")
    assert parses(smollm, spec, "SELECT random(), total(age) FROM singer")


def test_sqlite_file_path_gives_its_tables_and_columns(smollm):
    spec = sql(DEPARTMENT_STORE)
    assert "Customers" in spec.tables and "customer_name" in spec.columns and len(spec.tables) == 14
    assert parses(
        smollm,
        spec,
        "SELECT T1.customer_name, count(*) FROM Customers AS T1 JOIN Customer_Orders AS T2 "
        "ON T1.customer_id = T2.customer_id GROUP BY T1.customer_id HAVING count(*) >= 2 ORDER BY 2 DESC",
    )
    assert not parses(smollm, spec, "SELECT customer_name FROM Clients")
    assert not parses(smollm, spec, "SELECT customer_nickname FROM Customers")
    assert sql(DEPARTMENT_STORE) == spec  # equal specs share one compiled constraint


def test_sqlite_file_is_opened_read_only(tmp_path):
    copy = tmp_path / "store.sqlite"
    shutil.copy(DEPARTMENT_STORE, copy)
    before = copy.read_bytes()
    sql(copy)
    assert copy.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["store.sqlite"]


def test_connection_and_quoted_names(smollm, tmp_path):
    connection = sqlite3.connect(tmp_path / "odd.db")
    connection.execute('CREATE TABLE "Order Lines" ("Unit Price" REAL, qty INTEGER)')
    spec = sql(connection)
    assert (spec.tables, spec.columns) == (("Order Lines",), ("Unit Price", "qty"))
    assert parses(smollm, spec, 'SELECT "Unit Price" * qty FROM "Order Lines"')
    assert parses(smollm, spec, "SELECT [unit price], `QTY` FROM [Order Lines] WHERE qty BETWEEN 1 AND 3")
    assert not parses(smollm, spec, "SELECT Unit Price FROM [Order Lines]")  # a name with a space needs quotes


def test_grammar_covers_common_sqlite_select_syntax(smollm):
    spec = sql()  # no schema: any name
    for query in [
        "SELECT DISTINCT a AS x, b AS 'y' FROM t1, t2 WHERE t1.id = t2.id AND NOT c IS NULL",
        "SELECT * FROM a LEFT OUTER JOIN b USING (id) WHERE x NOT LIKE 'a%' OR y IS NOT NULL",
        "SELECT count(DISTINCT a), sum(b) / 2.5, round(avg(c), 2) FROM (SELECT * FROM t) AS s",
        "SELECT CASE WHEN a > 0 THEN 'pos' ELSE 'neg' END, CAST(b AS INTEGER) FROM t LIMIT 5 OFFSET 10",
        "SELECT coalesce(a, ifnull(b, -1)), strftime('%Y', d), upper(substr(e, 1, 3)) FROM t",
        "SELECT a FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.a = t.a) UNION ALL SELECT a FROM v ORDER BY 1 ASC;",
        "select x from t where y in (1, 2, 3) intersect select x from u except select x from w",
        "SELECT a, length(b) FROM t WHERE a BETWEEN 1 AND 5 AND b <> 'x''y' GROUP BY a HAVING max(c) >= 3",
    ]:
        assert parses(smollm, spec, query), query
    for text in ["SELECT FROM t", "SELECT a FROM", "SELECT a, FROM t", "DELETE FROM t", "SELECT a FROM t WHERE b ="]:
        assert not parses(smollm, spec, text), text


def test_functions_are_those_of_the_sqlite_in_use_with_their_argument_counts(smollm):
    spec = sql()
    connection = sqlite3.connect(":memory:")
    calls = [
        "floor(a)",
        "floor(a, b)",
        "substr(a, 1)",
        "substr(a, 1, 2)",
        "substr(a)",
        "coalesce(a)",
        "coalesce(a, b, c)",
        "concat(a, b)",
        "group_concat(DISTINCT a)",
        "group_concat(DISTINCT a, ',')",
        "max(a, b, c)",
        "random()",
        "random(1)",
        "row_number()",
        "iif(a, b)",
        "iif(a, b, c)",
        "char()",
    ]
    for call in calls:
        query = f"SELECT {call} FROM t"
        try:  # what the SQLite this process runs says about the call, on a table that has the names
            connection.execute(f"EXPLAIN SELECT {call} FROM (SELECT 1 AS a, 2 AS b, 3 AS c) AS t")
            compiles = True
        except sqlite3.Error:
            compiles = False
        assert parses(smollm, spec, query) == compiles, (call, compiles)
    assert not parses(smollm, spec, "SELECT floor(a, b) FROM t")  # the example, on every SQLite


def test_missing_database_file_is_named():
    with pytest.raises(DatabaseNotFoundError, match="no-such.sqlite"):
        sql("/nonexistent/no-such.sqlite")
    assert issubclass(DatabaseNotFoundError, ConstraintError)


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a database, just text that is long enough to have a header " * 4)
    with pytest.raises(DatabaseNotFoundError, match="notes.txt"):
        sql(path)


def test_unknown_dialect_is_named():
    with pytest.raises(ConstraintError, match="postgres"):
        sql(DEPARTMENT_STORE, dialect="postgres")


def test_bad_schema_arguments():
    with pytest.raises(ConstraintError, match="table_names_original"):
        sql(tables={"db_id": "x"})
    with pytest.raises(TypeError):
        sql(DEPARTMENT_STORE, tables=TABLES["tvshow"])
    with pytest.raises(TypeError):
        sql(42)
    with pytest.raises(ConstraintError, match="no tables"):
        sql(sqlite3.connect(":memory:"))
