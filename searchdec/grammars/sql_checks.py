"""Checks that make `sd.sql(db=...)` / `sd.sql(tables=...)` outputs compile on their database, beyond what
the grammar (sql.lark) can say. Both read the output as SQLite's own tokenizer would, one byte at a time,
in one `SqlState` (grammars/base.py's check contract):

- **words**: SQLite splits words at non-word characters only, so two lexemes the grammar took apart
  ("AND" + "SourceAirport") but wrote with nothing between them are one word to SQLite
  ("ANDSourceAirport"). Every bare word of the output (outside strings and quoted names) must be a word
  the grammar means: a keyword, a function of the SQLite in use, a table or column name of the schema,
  an alias T1..T9, a number, or the free name that follows AS or COLLATE. A word that is not even the
  beginning of such a word is VIOLATED at the byte that makes it so, so the search backtracks at once.
  Likewise "--" and "/*", which the grammar reads as two operators ("a - -1") but SQLite as a comment
  (which would hide the rest of the line from it).
- **scope** (names in scope of FROM/JOIN, aliases, GROUP BY and aggregate rules, everything SQLite
  checks when it compiles a statement): when a clause that follows FROM begins at the top level
  (WHERE, GROUP, HAVING, ORDER, LIMIT, a compound operator, or AND/OR after WHERE), nothing written later
  can change the meaning of what precedes it, so the text before the keyword is compiled with `EXPLAIN`
  on the schema (an empty in-memory database with its tables): an error other than a syntax error is
  final (VIOLATED). The whole output is OK only when `EXPLAIN` compiles it; before that the check is
  UNDECIDED, so end-of-sequence waits (a JOIN may still bring the table a name needs).
- **range names** (a table or alias named once in FROM): at each top-level `,` or JOIN of a FROM list, the
  tables so far are compiled as `SELECT * FROM <them>`; "ambiguous column name" there means a range
  name is defined twice (`FROM Documents, Documents`, `singer AS T1 JOIN concert AS T1`) or an ON
  condition is ambiguous, which no later text can undo: VIOLATED at once (a degenerate repetition of
  the same table ends there instead of running to `max_tokens`).

- **closing** (`completion`, for the budget's closing walk): where the grammar's shortest completion would
  not compile — a select list whose names no table written so far holds, a subquery without its FROM —
  the check plans the rest instead: each open SELECT (innermost first) gets the tables its names need
  (`FROM t`, or `, t` on a FROM list still open), each open parenthesis its `)`, chosen by asking SQLite
  which name is missing until the text compiles (`_repair`); the walk writes that plan byte by byte, so a
  hypothesis steered to close within `max_tokens` closes into a query that compiles.

So every finished output compiles under `EXPLAIN` on its schema.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from dataclasses import dataclass, field

from searchdec.grammars.base import Check, CheckState, State, TokenizerInfo, Verdict

_ASCII_WORD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$"
_WORD_BYTES = frozenset(_ASCII_WORD) | frozenset(range(0x80, 0x100))  # SQLite: non-ASCII bytes are word bytes
_QUOTES = {ord("'"): ord("'"), ord('"'): ord('"'), ord("`"): ord("`"), ord("["): ord("]")}
# Words after which the next word is a name the output makes up (an alias, a type, a collation).
_FREE_AFTER = frozenset({"as", "collate"})
# Clause keywords after which nothing can change the text before them (at the top level).
_CLOSED_BEFORE = frozenset({"where", "group", "having", "order", "limit", "union", "intersect", "except"})
_CLOSED_BEFORE_AFTER_WHERE = frozenset({"and", "or"})
_NUMBER = re.compile(r"[0-9]*([eE][0-9]*)?|0[xX][0-9A-Fa-f]*")
# Type names CAST may name beyond the first free word ("DOUBLE PRECISION", "VARCHAR(10)").
_JOIN_KINDS = re.compile(r"(?:\s+(?:natural|left|right|full|inner|outer|cross))*\s*$", re.I)
_TYPE_WORDS = (
    "integer int text real numeric varchar char float double precision boolean date blob decimal "
    "bigint smallint tinyint character varying nchar nvarchar clob unsigned big medium"
).split()


@functools.cache
def explain_database(schema: tuple[str, ...]) -> sqlite3.Connection:
    """An empty in-memory database made by the CREATE statements of `schema` (one per process)."""
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    for statement in schema:
        connection.execute(statement)
    return connection


def compile_error(schema: tuple[str, ...], query: str) -> str | None:
    """SQLite's message when `query` does not compile on `schema` (None: it compiles)."""
    try:
        explain_database(schema).execute("EXPLAIN " + query)
    except sqlite3.Warning as error:  # more than one statement
        return str(error)
    except sqlite3.Error as error:
        return str(error)
    return None


def _is_syntax(message: str) -> bool:
    return "syntax error" in message or "incomplete input" in message


@dataclass(frozen=True)
class SqlCheck(Check):
    """The words and scope checks of one schema (see the module docstring)."""

    words: frozenset[str] = field(repr=False)  # the bare words the grammar may write, lower case
    schema: tuple[str, ...] = field(repr=False)  # CREATE statements of the tables, for EXPLAIN
    name: str = "SQL compiles on its schema"

    @functools.cached_property
    def prefixes(self) -> frozenset[str]:
        """Every beginning of a known word (the words included)."""
        return frozenset(word[:i] for word in self.words | frozenset(_TYPE_WORDS) for i in range(1, len(word) + 1))

    @functools.cached_property
    def extendable(self) -> frozenset[str]:
        """Known words that begin a longer known word (a clause keyword that does not is complete as soon
        as it is written: "WHERE" cannot become another word, so the clause check need not wait for
        the byte after it)."""
        return frozenset(word[:i] for word in self.words | frozenset(_TYPE_WORDS) for i in range(1, len(word)))

    def start(self, tokenizer: TokenizerInfo | None = None) -> SqlState:
        return SqlState(self, b"", Verdict.UNDECIDED, 0, None, b"", "", False, False, False, None)

    @functools.cached_property
    def table_columns(self) -> dict[str, tuple[str, frozenset[str]]]:
        """Each table's lower-case name: its name as written in the schema, and its columns (lower case)."""
        db = explain_database(self.schema)
        tables = {}
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY rowid"):
            if _BARE_NAME.fullmatch(name):
                columns = db.execute("SELECT name FROM pragma_table_info(?)", (name,)).fetchall()
                tables[name.lower()] = (name, frozenset(column.lower() for (column,) in columns))
        return tables


class SqlState(CheckState):
    """The lexer's position in the output and the verdict so far. Immutable."""

    __slots__ = (
        "_check",
        "text",
        "_verdict",
        "_depth",
        "_quote",
        "_word",
        "_previous",
        "_after_where",
        "_quote_closing",
        "_word_checked",
        "_from_at",
        "_plan",
    )

    def __init__(
        self,
        check,
        text,
        verdict,
        depth,
        quote,
        word,
        previous,
        after_where,
        quote_closing,
        word_checked,
        from_at,
        plan=None,
    ):
        self._check = check
        self.text = text  # the output so far
        self._verdict = verdict
        self._depth = depth  # parentheses open outside quotes
        self._quote = quote  # the closing byte of the quote we are in, or None
        self._word = word  # the bare word in progress (bytes)
        self._previous = previous  # the last complete word, lower case ("" after punctuation)
        self._after_where = after_where  # WHERE has begun at the top level of the current SELECT
        self._quote_closing = quote_closing  # the quote's closing byte was just read (it may be doubled)
        self._word_checked = word_checked  # the word in progress is a clause keyword already checked
        self._from_at = from_at  # where the top-level FROM list being written begins in `text`, or None
        self._plan = plan  # the rest of the closing plan being written (`completion`); None: not planned yet

    @property
    def verdict(self) -> Verdict:
        return self._verdict

    def feed(self, data: bytes, grammar: State | None) -> SqlState:
        if self._verdict is Verdict.VIOLATED:
            return self
        text, depth, quote, word = self.text, self._depth, self._quote, self._word
        previous, after_where, closing, checked, from_at = (
            self._previous,
            self._after_where,
            self._quote_closing,
            self._word_checked,
            self._from_at,
        )
        for byte in data:
            if quote is not None:
                text += bytes([byte])
                if closing:
                    closing = False
                    if byte == quote and quote != ord("]"):
                        continue  # a doubled quote: still inside
                    quote, previous, text = None, "", text[:-1]  # the quote ended before this byte
                elif byte == quote:
                    closing = True
                    continue
                else:
                    continue
            if (byte == ord("-") and text.endswith(b"-")) or (byte == ord("*") and text.endswith(b"/")):
                return self._violated(text + bytes([byte]))  # SQLite reads a comment where the grammar meant operators
            if byte in _WORD_BYTES:
                word += bytes([byte])
                text += bytes([byte])
                if checked or not self._word_may_be(word, previous):
                    return self._violated(text)
                lower = word.decode("utf-8", "replace").lower()
                if depth == 0 and lower in self._check.words and lower not in self._check.extendable:
                    if self._clause_closes(lower, after_where) and self._closed_wrong(text, word):
                        return self._violated(text)
                    checked = self._clause_closes(lower, after_where)
                continue
            if word:
                done = word.decode("utf-8", "replace").lower()
                if not self._word_is(done, previous) and not (byte == ord("'") and done == "x"):
                    return self._violated(text)
                if depth == 0 and not checked and self._clause_closes(done, after_where):
                    if self._closed_wrong(text, word):
                        return self._violated(text)
                if depth == 0:
                    after_where = (after_where or done == "where") and done not in ("union", "intersect", "except")
                    if done == "join" and from_at is not None and self._range_names_clash(text, from_at, word):
                        return self._violated(text)
                    from_at = len(text) if done == "from" else None if done in _CLOSED_BEFORE else from_at
                previous, word, checked = done, b"", False
            if byte in _QUOTES:
                quote, previous = _QUOTES[byte], ""
            elif byte == ord("("):
                depth += 1
            elif byte == ord(")"):
                depth = max(depth - 1, 0)
            elif byte == ord(",") and depth == 0 and from_at is not None:
                if self._range_names_clash(text, from_at, b""):
                    return self._violated(text + b",")
            if byte not in b" \t\r\n" and byte not in _QUOTES:
                previous = ""
            text += bytes([byte])
        verdict = self._verdict_of(text, word, previous, quote, closing, grammar)
        plan = self._plan[len(data) :] if data and self._plan and self._plan.startswith(data) else None
        moved = (depth, quote, word, previous, after_where, closing, checked, from_at, plan or None)
        return SqlState(self._check, text, verdict, *moved)

    def completion(self) -> bytes | None:
        """For a closing walk (see `CheckState.completion` and the module docstring): None once the text
        compiles, else the rest of a plan that makes it compile, else b"" (the grammar's next token, then
        ask again: an expression in progress must end before tables can follow)."""
        if self._verdict is not Verdict.UNDECIDED:
            return None
        if self._plan is None:
            found = _repair(self._check, self.text.decode("utf-8", "replace"))
            self._plan = found.encode() if found else b""
        return self._plan

    @staticmethod
    def _clause_closes(word: str, after_where: bool) -> bool:
        """Whether `word`, at the top level, closes what precedes it (see the module docstring)."""
        return word in _CLOSED_BEFORE or (after_where and word in _CLOSED_BEFORE_AFTER_WHERE)

    def _closed_wrong(self, text: bytes, word: bytes) -> bool:
        """Whether the statement before the clause keyword `word` (the end of `text`) fails to compile
        for a reason other than syntax (an incomplete stretch, such as "a BETWEEN 1", is not final)."""
        before = text[: len(text) - len(word)].decode("utf-8", "replace")
        error = compile_error(self._check.schema, before)
        return error is not None and not _is_syntax(error)

    def _range_names_clash(self, text: bytes, from_at: int, word: bytes) -> bool:
        """Whether the FROM list written so far (`text` from `from_at`, less the JOIN `word` and its kind)
        names a range twice, or holds an ambiguous ON condition: final (see the module docstring)."""
        tables = _JOIN_KINDS.sub("", text[from_at : len(text) - len(word)].decode("utf-8", "replace"))
        error = compile_error(self._check.schema, "SELECT * FROM " + tables) if tables.strip() else None
        return error is not None and "ambiguous column name" in error

    def _word_may_be(self, word: bytes, previous: str) -> bool:
        """Whether `word` (in progress) can still become a word the grammar means."""
        if previous in _FREE_AFTER:
            return True
        lower = word.decode("utf-8", "replace").lower()
        if word[:1].isdigit():
            return _NUMBER.fullmatch(lower) is not None
        return lower in self._check.prefixes

    def _word_is(self, word: str, previous: str) -> bool:
        if previous in _FREE_AFTER or word in self._check.words or word in _TYPE_WORDS:
            return True
        return word[:1].isdigit() and _NUMBER.fullmatch(word) is not None

    def _verdict_of(self, text, word, previous, quote, closing, grammar) -> Verdict:
        if grammar is not None and not grammar.accepting:
            return Verdict.UNDECIDED  # the grammar says the statement is not complete: no need to ask SQLite
        if quote is not None and not closing:
            return Verdict.UNDECIDED
        if word and not self._word_is(word.decode("utf-8", "replace").lower(), previous):
            return Verdict.UNDECIDED
        query = text.decode("utf-8", "replace").strip()
        if not query:
            return Verdict.UNDECIDED
        return Verdict.OK if compile_error(self._check.schema, query) is None else Verdict.UNDECIDED

    def _violated(self, text: bytes) -> SqlState:
        return SqlState(self._check, text, Verdict.VIOLATED, self._depth, None, b"", "", False, False, False, None)


# --- closing: a plan that makes the text compile ---------------------------------------------------

_BARE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MISSING = re.compile(r"no such column: (?:(\w+)\.)?(\w+)$")
_REPAIR_TRIES = 24  # compiles one plan may spend


@dataclass
class _Level:
    """One SELECT (the text's top level, or a parenthesis) as far as the closing plan needs it."""

    closes: str  # what ends it: ")" for a parenthesis, "" for the top level
    select: bool  # a SELECT is being written at this level (not an expression in parentheses)
    from_state: str = "none"  # "none": no FROM yet; "open": on its FROM list; "closed": a later clause began
    needs_table: bool = False  # the FROM list ends where a table must come (after FROM, JOIN or ",")
    names: set[str] = field(default_factory=set)  # words written at this level (lower case), "q.name" qualified
    tables: set[str] = field(default_factory=set)  # range names of its FROM list (lower case)


def _levels(text: str) -> list[_Level] | None:
    """The SELECTs open at the end of `text`, outermost first; None inside a quote or a comment (the
    grammar's walk must end it first)."""
    levels = [_Level("", select=False)]
    i, n, last = 0, len(text), ""
    while i < n:
        char, level = text[i], levels[-1]
        if char in "'\"`[":
            end = text.find("]" if char == "[" else char, i + 1)
            while end != -1 and char != "[" and text[end + 1 : end + 2] == char:
                end = text.find(char, end + 2)  # a doubled quote stays inside
            if end == -1:
                return None
            if char != "'" and level.from_state == "open" and level.needs_table:
                level.tables.add(text[i + 1 : end].lower())
                level.needs_table = False
            i, last = end + 1, ""
            continue
        if text.startswith("--", i):
            end = text.find("\n", i)
            if end == -1:
                return None
            i = end + 1
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                return None
            i = end + 2
            continue
        if char.isalnum() or char in "_$" or ord(char) >= 0x80:
            j = i
            while j < n and (text[j].isalnum() or text[j] in "_$" or ord(text[j]) >= 0x80):
                j += 1
            word = text[i:j].lower()
            qualified = last + word if last.endswith(".") else word
            level.names.add(qualified)
            if word == "select":
                level.select, level.from_state, level.tables = True, "none", set()
            elif word == "from" and level.select:
                level.from_state, level.needs_table = "open", True
            elif word == "join" and level.from_state == "open":
                level.needs_table = True
            elif word in _CLOSED_BEFORE and level.from_state == "open":
                level.from_state = "closed"
            elif level.from_state == "open" and level.needs_table:
                level.tables.add(word)
                level.needs_table = False
            elif level.from_state == "open" and last in ("as", ""):
                level.tables.add(word)  # an alias
            last, i = word, j
            continue
        if char == "(":
            if level.from_state == "open":
                level.needs_table = False  # the parenthesis is the FROM item (a subquery or a join)
            levels.append(_Level(")", select=False))
        elif char == ")":
            if len(levels) > 1:
                levels.pop()
                if levels[-1].from_state == "open" and levels[-1].needs_table:
                    levels[-1].needs_table = False  # a subquery was the table
        elif char == "," and level.from_state == "open":
            level.needs_table = True
        if char == ".":
            last = last + "." if last and not last.endswith(".") else ""
        elif not char.isspace():
            last = ""
        elif last.endswith("."):
            last = ""
        i += 1
    return levels


def _repair(check: SqlCheck, text: str) -> str | None:
    """The text that, written after `text`, makes it a query that compiles, by the plan of the module
    docstring's closing paragraph; None when none is found (the grammar must go on first, or no FROM
    list still open can take the table a name needs)."""
    levels = _levels(text)
    if levels is None or not any(level.select for level in levels):
        return None
    tables = check.table_columns
    chosen: dict[int, list[str]] = {}  # per level, the FROM items the plan adds ("table" or "table AS alias")
    guessed: set[int] = set()  # levels whose first item is a guess, replaced by the first name SQLite misses
    for k, level in enumerate(levels):
        if level.select and (level.from_state == "none" or (level.from_state == "open" and level.needs_table)):
            chosen[k] = [_likeliest_table(tables, level.names)]
            guessed.add(k)
    tried: set[tuple[int, str]] = set()
    for _ in range(_REPAIR_TRIES):
        plan = _plan_text(levels, chosen, tables)
        if text[-1:].isspace():
            plan = plan.lstrip(" ")
        error = compile_error(check.schema, text + plan)
        if error is None:
            return plan
        missing = _MISSING.search(error)
        if missing is None:
            return None
        written, column = missing.group(1) or "", missing.group(2).lower()
        qualifier = written.lower()
        wanted = f"{qualifier}.{column}" if qualifier else column
        for k in range(len(levels) - 1, -1, -1):
            level = levels[k]
            if wanted in level.names and level.select and level.from_state != "closed":
                break
        else:
            return None
        if qualifier in tables and qualifier not in level.tables and qualifier not in chosen.get(k, []):
            item = qualifier  # "TV_Series.id" with TV_Series not joined yet: join it
        else:
            holders = {t: tables[t] for t, (_, columns) in tables.items() if column in columns and (k, t) not in tried}
            if not holders:
                return None
            holder = _likeliest_table(holders, level.names)
            item = holder + (f" AS {written}" if qualifier and qualifier not in tables else "")
            tried.add((k, holder))
        items = chosen.setdefault(k, [])
        if k in guessed:
            guessed.discard(k)
            items[0] = item
        else:
            items.append(item)
    return None


def _likeliest_table(tables: dict[str, tuple[str, frozenset[str]]], names: set[str]) -> str:
    """The table holding the most of `names` (the first table on a tie): a first guess, corrected by SQLite."""
    return max(tables, key=lambda t: (len(tables[t][1] & names) + 2 * (t in names), -list(tables).index(t)))


def _plan_text(levels: list[_Level], chosen: dict[int, list[str]], tables) -> str:
    """The text of a plan: innermost level first, its chosen FROM items (the tables spelled as the schema
    spells them), then what closes it."""
    parts = []
    for k in range(len(levels) - 1, -1, -1):
        level, written = levels[k], []
        for item in chosen.get(k, []):
            table, _, alias = item.partition(" ")
            written.append(tables[table][0] + (" " + alias if alias else ""))
        if written and level.from_state == "none":
            parts.append(" FROM " + ", ".join(written))
        elif written and level.needs_table:
            parts.append(" " + ", ".join(written))
        elif written:
            parts.append("".join(", " + item for item in written))
        parts.append(level.closes)
    return "".join(parts)
