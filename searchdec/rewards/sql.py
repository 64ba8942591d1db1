"""SQL execution reward: run the output against a SQLite database, read-only, with a time limit.

The database is opened read-only (`mode=ro` URI), with `PRAGMA query_only` and an authorizer that
denies anything but reading, so `DROP TABLE`, `INSERT`, `ATTACH` or `PRAGMA writable_schema` fail
before they touch the file. A progress handler aborts a query past `timeout` seconds (a cross join
of large tables, a recursive CTE that never ends). Scores, by `mode`:
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
        self.path = os.fspath(db)
        if not os.path.isfile(self.path):
            raise DatabaseNotFoundError(f"no SQLite database file at {self.path!r}")
        self.mode, self.timeout, self.max_rows = mode, timeout, max_rows
        self.ordered = isinstance(expected, str) and bool(re.search(r"\border\s+by\b", expected, re.I))
        self.expected = self._run(expected)[0] if isinstance(expected, str) else expected
        if isinstance(expected, str) and self.expected is None:
            raise ValueError(f"the expected query fails: {self._run(expected)[1]}")

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
        uri = "file:" + os.path.abspath(self.path).replace("?", "%3F").replace("#", "%23") + "?mode=ro"
        try:
            connection = sqlite3.connect(uri, uri=True, timeout=self.timeout, check_same_thread=False)
        except sqlite3.Error as error:
            return None, f"cannot open the database: {error}"
        deadline = time.monotonic() + self.timeout
        try:
            connection.execute("PRAGMA query_only = ON")
            connection.set_authorizer(_read_only)
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
            connection.close()


def _read_only(action, arg1, arg2, db_name, trigger):
    if action in _READ_ACTIONS or action == _RECURSIVE:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1 in ("table_info", "table_xinfo", "index_list", "index_info"):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY
