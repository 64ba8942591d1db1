"""`sd.sql`: SQLite SELECT statements, optionally limited to one database's table and column names.

The grammar is `sql.lark` (shipped as package data). Given a database (a SQLite file or an open
`sqlite3.Connection`) or a Spider `tables.json` entry, its two placeholder terminals are replaced by
the schema's names, so a constrained model can only name tables and columns that exist (matched
case-insensitively, as SQLite does, bare or quoted). Aliases (`AS T1`) remain free identifiers.
Without a schema the grammar accepts any identifier where a name goes.

With a schema, the output is also checked beyond the grammar (grammars/sql_checks.py, on by default,
`checks=False` to turn off): SQLite's own word boundaries (no "ANDname"), and names in scope, aliases,
GROUP BY and aggregate rules, by compiling each closed stretch of the query and the whole of it with
`EXPLAIN` on an empty database with the schema's tables: every finished query compiles there.

Function calls are specialized too, always, to the SQLite library this process runs (the one `EXPLAIN`
and the SQL reward use): only functions it provides (`pragma_function_list`; `concat` only where SQLite
is 3.44 or newer), each with the argument counts it accepts (`FLOOR(a, b)` is refused), DISTINCT only
in a one-argument aggregate, and no window-only function (the grammar has no OVER clause).
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

from searchdec.errors import ConstraintError, DatabaseNotFoundError
from searchdec.grammars.specs import ConstraintSpec

DIALECTS = ("sqlite",)

_PLACEHOLDER = {"tables": "TABLE_NAME", "columns": "COLUMN_NAME"}
# Table aliases of a specialized grammar: Spider's T1, T2, ... (every alias in its dev set has this form).
_TABLE_ALIASES = "/[Tt][1-9]/"

_BARE = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")


def grammar_text() -> str:
    """The schema-free SQLite SELECT grammar (`sql.lark`)."""
    return resources.files("searchdec.grammars").joinpath("sql.lark").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Sql(ConstraintSpec):
    """SQLite SELECT statements; with `tables`/`columns`, only those names (empty tuples: any name)."""

    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    dialect: str = "sqlite"
    schema: tuple[str, ...] = ()  # the CREATE statements of the tables, for the checks' EXPLAIN (empty: no checks)

    # Tokens the budget's closing walk prefers (search/budget.py): "SELECT * FROM t" is the shortest
    # query; the JSON-minded default would loop on "" string literals.
    CLOSING = (")", " FROM", "FROM", "*", ";", "0")

    @property
    def source(self) -> str:
        """The Lark grammar, specialized to this spec's names."""
        text = _ascii_case_folded(grammar_text())
        for kind, names in (("tables", self.tables), ("columns", self.columns)):
            if names:
                text = _substitute(text, _PLACEHOLDER[kind], _name_terminal(names))
        if self.tables:
            text = _substitute(text, "TABLE_ALIAS", _TABLE_ALIASES)
        rule, terminals = _function_grammar()
        text = _replace_definition(text, "sqlite_function", rule)
        text = _replace_definition(text, "FUNCTION0", "")
        return _replace_definition(text, "FUNCTION", "\n".join(terminals))

    def describe(self) -> str:
        return f"SQL grammar ({self.dialect})"

    def split_checks(self) -> tuple[ConstraintSpec, tuple]:
        if not self.schema:
            return self, ()
        from searchdec.grammars.sql_checks import SqlCheck  # the checks build on this module's names

        words = _grammar_words() | {f.name for f in sqlite_functions()} | {f"t{i}" for i in range(1, 10)}
        words |= {name.lower() for name in self.tables + self.columns if _BARE.fullmatch(name)}
        return self, (SqlCheck(frozenset(words), self.schema),)

    def lark(self) -> str:
        return self.source


def sql(db=None, *, tables=None, dialect: str = "sqlite", checks: bool = True) -> Sql:
    """SQLite SELECT statements over the schema of `db` (a SQLite file path or `sqlite3.Connection`)
    or of `tables` (a Spider `tables.json` entry); with neither, any table and column names.

    With a schema and `checks=True` (the default), every finished query also compiles under `EXPLAIN`
    on that schema (see grammars/sql_checks.py); `checks=False` keeps the grammar alone."""
    if not isinstance(checks, bool):
        raise TypeError(f"sql() checks must be True or False, got {checks!r}")
    if dialect not in DIALECTS:
        raise ConstraintError(f"unsupported SQL dialect {dialect!r}; supported: {', '.join(DIALECTS)}")
    if db is not None and tables is not None:
        raise TypeError("sql() takes a database or a tables.json entry, not both")
    if db is not None:
        table_names, column_names = _schema_from_db(db)
        schema = _ddl_from_db(db) if checks else ()
    elif tables is not None:
        table_names, column_names = _schema_from_spider(tables)
        schema = _ddl(spider_database(tables)) if checks else ()
    else:
        return Sql(dialect=dialect)
    if not table_names:
        raise ConstraintError("the database has no tables, so no SELECT over it can be written")
    if not column_names:
        raise ConstraintError("the database's tables have no columns")
    return Sql(_unique(table_names), _unique(column_names), dialect, schema)


_SQL_TYPES = {"number": "NUMERIC", "time": "TEXT", "boolean": "INTEGER"}  # Spider's column types; others are TEXT


def spider_database(entry: dict) -> sqlite3.Connection:
    """An empty in-memory SQLite database with the tables and columns of a Spider `tables.json` entry
    (types, primary and foreign keys included), where `EXPLAIN query` tells whether a query compiles."""
    _schema_from_spider(entry)  # checks the entry's shape
    table_names = entry["table_names_original"]
    columns: dict[int, list[str]] = {i: [] for i in range(len(table_names))}
    types = entry.get("column_types", [])
    primary = set(entry.get("primary_keys", []))
    for index, (table, name) in enumerate(entry["column_names_original"]):
        if table >= 0:
            kind = _SQL_TYPES.get(types[index] if types else "", "TEXT")
            columns[table].append(f"{_quote(name)} {kind}{' PRIMARY KEY' if index in primary else ''}")
    for source, target in entry.get("foreign_keys", []):
        table, name = entry["column_names_original"][source]
        target_table, target_name = entry["column_names_original"][target]
        columns[table].append(
            f"FOREIGN KEY ({_quote(name)}) REFERENCES {_quote(table_names[target_table])} ({_quote(target_name)})"
        )
    connection = sqlite3.connect(":memory:")
    for index, name in enumerate(table_names):
        if name.lower().startswith("sqlite_"):
            continue  # SQLite's own tables (sqlite_sequence), which it makes itself
        if sum(1 for c in columns[index] if " PRIMARY KEY" in c) > 1:  # a composite key: declare it once
            columns[index] = [c.replace(" PRIMARY KEY", "") for c in columns[index]]
        connection.execute(f"CREATE TABLE {_quote(name)} ({', '.join(columns[index]) or 'unused'})")
    return connection


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- reading schemas ----------------------------------------------------------------------------


def _schema_from_db(db) -> tuple[list[str], list[str]]:
    if isinstance(db, sqlite3.Connection):
        return _read_schema(db)
    if not isinstance(db, (str, os.PathLike)):
        raise TypeError(f"sql() db must be a path or a sqlite3.Connection, got {type(db).__name__}")
    path = os.fspath(db)
    if not os.path.isfile(path):
        raise DatabaseNotFoundError(f"no SQLite database file at {path!r}")
    uri = "file:" + _uri_path(os.path.abspath(path)) + "?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as error:
        raise DatabaseNotFoundError(f"cannot open SQLite database {path!r}: {error}") from None
    try:
        return _read_schema(connection, path)
    finally:
        connection.close()


def _ddl(connection: sqlite3.Connection) -> tuple[str, ...]:
    """The CREATE statements of a database's tables and views (its indexes and triggers do not change
    what compiles), in creation order, so an empty copy can be made anywhere."""
    rows = connection.execute(
        "SELECT sql FROM sqlite_master WHERE type IN ('table', 'view') AND sql IS NOT NULL"
        " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid"
    ).fetchall()
    return tuple(row[0] for row in rows)


def _ddl_from_db(db) -> tuple[str, ...]:
    if isinstance(db, sqlite3.Connection):
        return _ddl(db)
    connection = sqlite3.connect("file:" + _uri_path(os.path.abspath(os.fspath(db))) + "?mode=ro", uri=True)
    try:
        return _ddl(connection)
    finally:
        connection.close()


@functools.cache
def _grammar_words() -> frozenset[str]:
    """The keywords of sql.lark, lower case: its "word"i literals and its KEYWORD list."""
    text = grammar_text()
    words = {word.lower() for word in re.findall(r'"([A-Za-z_]+)"i', text)}
    listed = re.search(r"^KEYWORD: /\(\?i:([a-z_|]+)\)/", text, re.MULTILINE)
    if listed is None:
        raise RuntimeError("sql.lark must list its keywords on one KEYWORD line")
    return frozenset(words | set(listed.group(1).split("|")))


def _uri_path(path: str) -> str:
    # Characters with a meaning in a URI must be percent-encoded in the file name.
    return "".join(f"%{ord(c):02X}" if c in "%?#" else c for c in path.replace(os.sep, "/"))


def _read_schema(connection: sqlite3.Connection, path: str | None = None) -> tuple[list[str], list[str]]:
    where = f"SQLite database {path!r}" if path else "SQLite database"
    try:
        rows = connection.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
            " ORDER BY rowid"
        ).fetchall()
        table_names = [row[0] for row in rows]
        column_names = []
        for table in table_names:
            column_names += [row[0] for row in connection.execute("SELECT name FROM pragma_table_info(?)", (table,))]
    except sqlite3.DatabaseError as error:
        raise DatabaseNotFoundError(f"cannot read {where}: {error}") from None
    return table_names, column_names


def _check_entry(entry) -> None:
    """Raise ConstraintError, naming the key and index, where a tables.json entry is not shaped as Spider's:
    names are strings, a column is [table index (-1 for "*"), name], keys index the columns."""
    if not isinstance(entry, dict):
        raise TypeError(f"sql() tables must be a tables.json entry (a dict), got {type(entry).__name__}")
    for key in ("table_names_original", "column_names_original"):
        if key not in entry:
            raise ConstraintError(f"the tables.json entry has no {key!r}")
        if not isinstance(entry[key], list):
            raise ConstraintError(f"the tables.json entry's {key!r} must be a list, got {type(entry[key]).__name__}")
    tables, columns = entry["table_names_original"], entry["column_names_original"]
    for index, name in enumerate(tables):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConstraintError(f"table_names_original[{index}] must be a name of printable characters, got {name!r}")
    for index, column in enumerate(columns):
        if not (isinstance(column, (list, tuple)) and len(column) == 2):
            raise ConstraintError(f"column_names_original entries are [table index, name] pairs, got {column!r}")
        table, name = column
        if type(table) is not int or not -1 <= table < len(tables):
            raise ConstraintError(
                f"column_names_original[{index}] names table {table!r}, not an index of table_names_original (or -1)"
            )
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConstraintError(
                f"column_names_original[{index}] must name the column (printable characters), got {name!r}"
            )
    seen_tables = _repeated(name.lower() for name in tables)
    if seen_tables:
        raise ConstraintError(f"table_names_original names {seen_tables!r} twice (SQLite names ignore case)")
    repeated = _repeated(f"{table}.{name.lower()}" for table, name in columns if table >= 0)
    if repeated:
        table, name = repeated.split(".", 1)
        raise ConstraintError(f"column_names_original names column {name!r} twice in table {tables[int(table)]!r}")
    types = entry.get("column_types", [])
    if not isinstance(types, list) or not all(isinstance(kind, str) for kind in types):
        raise ConstraintError(f"the tables.json entry's 'column_types' must be a list of strings, got {types!r}"[:300])
    if types and len(types) != len(columns):
        raise ConstraintError(f"column_types has {len(types)} entries for {len(columns)} columns")
    keys = entry.get("primary_keys", [])
    if not isinstance(keys, list) or not all(type(key) is int and 0 <= key < len(columns) for key in keys):
        raise ConstraintError(f"primary_keys must be a list of column indexes, got {keys!r}"[:300])
    pairs = entry.get("foreign_keys", [])
    if not isinstance(pairs, list) or not all(
        isinstance(pair, (list, tuple))
        and len(pair) == 2
        and all(type(i) is int and 0 <= i < len(columns) for i in pair)
        for pair in pairs
    ):
        raise ConstraintError(f"foreign_keys must be a list of [column index, column index] pairs, got {pairs!r}"[:300])
    for pair in pairs:
        if min(columns[pair[0]][0], columns[pair[1]][0]) < 0:
            raise ConstraintError(f"foreign key {list(pair)} names the '*' column, not a table's")


def _repeated(keys) -> str | None:
    seen = set()
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    return None


# SQLite reads any name, quoted; control characters break the grammar, and a lone surrogate is not text.
_NAME = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]+")


def _schema_from_spider(entry) -> tuple[list[str], list[str]]:
    _check_entry(entry)
    table_names = [str(name) for name in entry["table_names_original"]]
    # SQLite's own tables (sqlite_sequence) are not the schema's, and no query names them.
    internal = {i for i, name in enumerate(table_names) if name.lower().startswith("sqlite_")}
    table_names = [name for i, name in enumerate(table_names) if i not in internal]
    column_names = []
    for table_index, name in entry["column_names_original"]:
        if table_index >= 0 and table_index not in internal:  # [-1, "*"] is Spider's stand-in for *
            column_names.append(str(name))
    return table_names, column_names


def _unique(names) -> tuple[str, ...]:
    """Names without case-insensitive repeats (SQLite names are ASCII case-insensitive), first spelling kept."""
    seen, kept = set(), []
    for name in names:
        if not name:
            continue
        key = name.lower()
        if key not in seen:
            seen.add(key)
            kept.append(name)
    return tuple(kept)


# --- the functions of the SQLite in use ---------------------------------------------------------------

# Built-in window functions (sqlite.org/windowfunctions.html#builtins): they need OVER, which the grammar
# does not cover. (Aggregates such as sum are window-capable too, and stay.)
_WINDOW_ONLY = frozenset(
    "row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value".split()
)
# Names the grammar spells as keywords or operators (`x LIKE y`), or that change the connection.
_NOT_CALLABLE = frozenset({"count", "like", "glob", "match", "regexp", "load_extension"})
# Auxiliary functions of the FTS and R-tree extensions: they work only on such virtual tables, and
# SELECTs over a schema's plain tables cannot use them.
_EXTENSION_ONLY = frozenset(
    "fts5 fts5_source_id fts3_tokenizer bm25 highlight snippet matchinfo offsets optimize rtreenode rtreedepth"
    " rtreecheck".split()
)
_PROBED_ARGUMENTS = 4  # a variadic function's least argument count is found by EXPLAIN among 0..3


@dataclass(frozen=True)
class SqlFunction:
    """A function of the SQLite in use: its name, the least and most arguments (None: no most), and
    whether it is an aggregate (which alone takes DISTINCT, with one argument)."""

    name: str
    least: int
    most: int | None
    aggregate: bool


@functools.cache
def sqlite_functions() -> tuple[SqlFunction, ...]:
    """The functions this process's SQLite provides (`pragma_function_list`), with their argument counts.
    A fixed count comes from the list; a variadic function's least count is the first of 0..3 arguments
    that `EXPLAIN` accepts (`coalesce` needs two), since the list says only "any"."""
    connection = sqlite3.connect(":memory:")
    try:
        rows = connection.execute("SELECT name, type, narg FROM pragma_function_list").fetchall()
        counts: dict[str, set[int]] = {}
        aggregate: set[str] = set()
        for name, kind, narg in rows:
            name = name.lower()
            excluded = name in _NOT_CALLABLE | _WINDOW_ONLY | _EXTENSION_ONLY or name.startswith("current_")
            if excluded or not _WORD.fullmatch(name):
                continue
            counts.setdefault(name, set()).add(narg)
            if kind == "w":
                aggregate.add(name)
        found = []
        for name in sorted(counts):
            fixed = {n for n in counts[name] if n >= 0}
            least, most = (min(fixed), max(fixed)) if fixed else (None, None)
            if -1 in counts[name]:
                accepted = (n for n in range(_PROBED_ARGUMENTS) if _explains(connection, name, n))
                probed = next(accepted, _PROBED_ARGUMENTS)
                least, most = min(probed, least if least is not None else probed), None
            found.append(SqlFunction(name, least, most, name in aggregate))
        return tuple(found)
    finally:
        connection.close()


_WORD = re.compile(r"[a-z_][a-z0-9_]*")


def _explains(connection: sqlite3.Connection, name: str, arguments: int) -> bool:
    try:
        connection.execute(f"EXPLAIN SELECT {name}({', '.join(['1'] * arguments)})")
    except sqlite3.Error:
        return False
    return True


@functools.cache
def _function_grammar() -> tuple[str, list[str]]:
    """The `sqlite_function` rule and its terminals: one terminal per shape of call (aggregate or not,
    least and most arguments), naming every function of that shape."""
    shapes: dict[tuple[bool, int, int | None], list[str]] = {}
    for function in sqlite_functions():
        shapes.setdefault((function.aggregate, function.least, function.most), []).append(function.name)
    alternatives, terminals = [], []
    for index, ((aggregate, least, most), names) in enumerate(sorted(shapes.items(), key=repr)):
        terminal = f"FUNCTION_{index}"
        terminals.append(f"{terminal}: /(?:{'|'.join(_fold(name) for name in names)})/")
        arguments = _arguments(least, most)
        if aggregate and least <= 1 and (most is None or most >= 1):
            arguments = f"(DISTINCT expr | {arguments})"
        arguments = f" {arguments} " if arguments else " "
        alternatives.append(f'{terminal} "("{arguments}")"')
    return "sqlite_function: " + " | ".join(alternatives), terminals


def _arguments(least: int, most: int | None) -> str:
    """The rule body of `least` to `most` (None: any number of) comma-separated expressions."""
    if least == 0:
        return "" if most == 0 else f"({_arguments(1, most)})?"
    text = "expr" + ' "," expr' * (least - 1)
    if most is None:
        return text + ' ("," expr)*'
    return text + (f' ("," expr){{0,{most - least}}}' if most > least else "")


# --- specializing the grammar -------------------------------------------------------------------


def _spellings(name: str) -> list[str]:
    """How SQLite lets a query write `name`: bare (where it is an identifier) or quoted."""
    spellings = [name] if _BARE.fullmatch(name) else []
    spellings.append('"' + name.replace('"', '""') + '"')
    spellings.append("`" + name.replace("`", "``") + "`")
    if "]" not in name:
        spellings.append("[" + name + "]")
    return spellings


def _name_terminal(names) -> str:
    return " | ".join(f"/{_fold(spelling)}/" for name in names for spelling in _spellings(name))


# SQLite folds case in ASCII only; a regex's case-insensitive flag folds Unicode too, so "as"i would
# also match "Aſ" (long s) and "k" the Kelvin sign, which SQLite reads as other words. Keywords and
# names are therefore spelled with explicit ASCII classes: "as" -> [Aa][Ss].
_INSENSITIVE_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"i')
_INSENSITIVE_GROUP = re.compile(r"\(\?i:([A-Za-z0-9_|]+)\)")


def _fold(literal: str) -> str:
    """A regex body (for a Lark /.../ terminal) matching `literal` with ASCII letters in either case."""
    out = []
    for ch in literal:
        if ch.isascii() and ch.isalpha():
            out.append(f"[{ch.upper()}{ch.lower()}]")
        elif ch.isascii() and not ch.isalnum() and ch != "_":
            out.append("\\" + ch if ch not in " " else ch)
        else:
            out.append(ch)
    return "".join(out)


def _ascii_case_folded(text: str) -> str:
    text = _INSENSITIVE_LITERAL.sub(lambda m: f"/{_fold(json.loads(chr(34) + m.group(1) + chr(34)))}/", text)
    return _INSENSITIVE_GROUP.sub(lambda m: "(?:" + "|".join(_fold(w) for w in m.group(1).split("|")) + ")", text)


def _substitute(text: str, terminal: str, body: str) -> str:
    return _replace_definition(text, terminal, f"{terminal}: {body}")


def _replace_definition(text: str, name: str, definition: str) -> str:
    """`text` with the one-line definition of `name` (a rule or terminal) replaced by `definition`."""
    line = re.compile(rf"^{name}:.*$", re.MULTILINE)
    if len(line.findall(text)) != 1:
        raise RuntimeError(f"sql.lark must define {name} on exactly one line")
    return line.sub(lambda _: definition, text)


__all__ = ["DatabaseNotFoundError", "Sql", "SqlFunction", "grammar_text", "spider_database", "sql", "sqlite_functions"]
