"""Checks that make `sd.sql(db=...)` / `sd.sql(tables=...)` outputs compile on their database, beyond what
the grammar (sql.lark) can say. Both read the output as SQLite's own tokenizer would, one byte at a time,
in one `SqlState` (grammars/base.py's check contract):

- **words**: SQLite splits words at non-word characters only, so two lexemes the grammar took apart
  ("AND" + "SourceAirport") but wrote with nothing between them are one word to SQLite
  ("ANDSourceAirport"). Every bare word of the output (outside strings and quoted names) must be a word
  the grammar means: a keyword, a function of the SQLite in use, a table or column name of the schema,
  an alias T1..T9, a number, or the free name that follows AS or COLLATE. A word that is not even the
  beginning of such a word is VIOLATED at the byte that makes it so, so the search backtracks at once.
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
    )

    def __init__(
        self, check, text, verdict, depth, quote, word, previous, after_where, quote_closing, word_checked, from_at
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
        moved = (depth, quote, word, previous, after_where, closing, checked, from_at)
        return SqlState(self._check, text, verdict, *moved)

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
