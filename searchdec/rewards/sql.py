"""SQL execution reward: run the output against a SQLite database, read-only, with a time limit.

The database is a SQLite file path or a `sqlite3.Connection` (such as the in-memory schema
`grammars.sql.spider_database()` builds). A file, or a connection to one, is opened read-only
(`mode=ro` URI) for each query, so a query sees the file as it is now. An in-memory connection is
copied once, when the reward is made, into a private in-memory snapshot that the reward queries (and
pickles as its serialized image): the caller's connection is never touched, from any thread. Either
way the query runs under `PRAGMA query_only` and an authorizer that denies anything but reading, so
`DROP TABLE`, `INSERT`, `ATTACH` or `PRAGMA writable_schema` fail before they touch the data. A
progress handler aborts a query past `timeout` seconds (a cross join of large tables, a recursive
CTE that never ends). Scores, by `mode`:
- "runs": 1.0 when the query executes;
- "rows": 1.0 when it executes and returns at least one row;
- "match": 1.0 when its rows equal `expected` (a list of rows or a gold SQL query run the same way)
  as a multiset (order-insensitive unless the gold query has ORDER BY), the execution-accuracy
  measure of Spider.
Anything that fails scores 0.0; `explain(output)` says why.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections import Counter

from searchdec.errors import DatabaseNotFoundError
from searchdec.rewards.base import Reward

MODES = ("runs", "rows", "match")
_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
_RECURSIVE = getattr(sqlite3, "SQLITE_RECURSIVE", 33)


class SqlExecution(Reward):
    def __init__(self, db, *, mode: str = "runs", expected=None, timeout: float = 2.0, max_rows: int = 10_000) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "match" and expected is None:
            raise ValueError("mode='match' needs expected= (rows or a gold query)")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.path, self._snapshot = _open(db)
        self._lock = threading.Lock()  # the snapshot is one connection: one query at a time
        self.mode, self.timeout, self.max_rows = mode, timeout, max_rows
        self.ordered = isinstance(expected, str) and bool(re.search(r"\border\s+by\b", expected, re.I))
        self.expected = self._run(expected)[0] if isinstance(expected, str) else expected
        if isinstance(expected, str) and self.expected is None:
            raise ValueError(f"the expected query fails: {self._run(expected)[1]}")

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        del state["_lock"]
        if self._snapshot is not None:
            with self._lock:  # serializing reads the page count with a PRAGMA, which the authorizer denies
                self._snapshot.set_authorizer(None)
                try:
                    state["_snapshot"] = self._snapshot.serialize()
                finally:
                    self._snapshot.set_authorizer(_read_only)
        return state

    def __setstate__(self, state: dict) -> None:
        image = state.pop("_snapshot")
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._snapshot = None if image is None else _snapshot_of_image(image)

    def explain(self, output: str) -> str:
        """What running `output` gives: the row count, or the error."""
        rows, error = self._run(output)
        return error if rows is None else f"{len(rows)} rows"

    def _score(self, prompts, outputs):
        return [self._one(output) for output in outputs]

    def _one(self, output: str) -> float:
        rows, _ = self._run(output)
        if rows is None:
            return 0.0
        if self.mode == "runs":
            return 1.0
        if self.mode == "rows":
            return 1.0 if rows else 0.0
        expected = [tuple(row) for row in self.expected]
        if self.ordered:
            return 1.0 if rows == expected else 0.0
        return 1.0 if Counter(rows) == Counter(expected) else 0.0

    def _run(self, query: str) -> tuple[list[tuple] | None, str]:
        if self._snapshot is not None:
            with self._lock:
                return self._query(self._snapshot, query)
        connection = None
        try:
            connection = _connect_read_only(self.path, self.timeout)
            _guard(connection)
            return self._query(connection, query)
        except sqlite3.Error as error:
            return None, f"cannot open the database: {error}"
        finally:
            if connection is not None:
                connection.close()

    def _query(self, connection: sqlite3.Connection, query: str) -> tuple[list[tuple] | None, str]:
        deadline = time.monotonic() + self.timeout
        cursor = None
        try:
            connection.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 1000)
            cursor = connection.execute(query)
            rows = cursor.fetchmany(self.max_rows + 1)
            if len(rows) > self.max_rows:
                return None, f"more than {self.max_rows} rows"
            return [tuple(row) for row in rows], ""
        except sqlite3.OperationalError as error:
            if "interrupted" in str(error):
                return None, f"timed out after {self.timeout} s"
            return None, str(error)
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as error:
            return None, str(error)
        finally:
            if cursor is not None:
                cursor.close()
            connection.set_progress_handler(None, 0)


def _open(db) -> tuple[str | None, sqlite3.Connection | None]:
    """(file path, None) for a file or a connection to one; (None, a private snapshot) for an
    in-memory connection."""
    if isinstance(db, sqlite3.Connection):
        try:
            files = {name: file for _, name, file in db.execute("PRAGMA database_list")}
        except sqlite3.ProgrammingError as error:  # closed, or made in another thread
            raise ValueError(f"cannot read the sqlite3.Connection given to SqlExecution: {error}") from None
        if files.get("main"):
            return files["main"], None
        snapshot = sqlite3.connect(":memory:", check_same_thread=False)
        db.backup(snapshot)
        _guard(snapshot)
        return None, snapshot
    if not isinstance(db, (str, os.PathLike)):
        raise TypeError(
            "SqlExecution needs a SQLite file path or a sqlite3.Connection (e.g. spider_database(entry)), "
            f"got {type(db).__name__}"
        )
    path = os.fspath(db)
    if not os.path.isfile(path):
        raise DatabaseNotFoundError(f"no SQLite database file at {path!r}")
    return path, None


def _snapshot_of_image(image: bytes) -> sqlite3.Connection:
    snapshot = sqlite3.connect(":memory:", check_same_thread=False)
    snapshot.deserialize(image)
    _guard(snapshot)
    return snapshot


def _connect_read_only(path: str, timeout: float) -> sqlite3.Connection:
    uri = "file:" + os.path.abspath(path).replace("?", "%3F").replace("#", "%23") + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)


def _guard(connection: sqlite3.Connection) -> None:
    """Reading only from now on, whatever a query says (once per connection: the authorizer then
    refuses this very PRAGMA)."""
    connection.execute("PRAGMA query_only = ON")
    connection.set_authorizer(_read_only)


def _read_only(action, arg1, arg2, db_name, trigger):
    if action in _READ_ACTIONS or action == _RECURSIVE:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1 in ("table_info", "table_xinfo", "index_list", "index_info"):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY
