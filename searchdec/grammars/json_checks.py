"""JSON Schema keywords no grammar can hold, enforced by a check (grammars/base.py `Check`) over an
incremental parse of the output: `uniqueItems` (exact: jsonschema's equality, so 1 and 1.0 are one
value, true and 1 are two), `not`, `contains` / `minContains` / `maxContains`, `if` / `then` / `else`,
`dependentRequired`, `dependentSchemas`, and `format: "date"` (a real calendar date: no February 30).

`split(schema)` takes these keywords out of every schema node that applies to a value wherever the
value is (the root, `properties`, `patternProperties`, `additionalProperties`, `items`, `prefixItems`,
draft-7 tuple `items` / `additionalItems`, `allOf` members); the grammar compiles what is left (a date
keeps its `format`, which gives the grammar its shape). The `JsonCheck` parses the output as it grows,
knows for each value which of those nodes apply (from the keys and indexes on its path), and validates
each completed value with `jsonschema` against the keywords taken from them — the reference itself,
so the check agrees with it by construction. A duplicate array item is found as soon as the item is
complete; every other keyword when its value is. The same keywords elsewhere (inside `anyOf`, `oneOf`,
`$defs` reached by `$ref`) apply only on some branches: they stay in the grammar's schema, which
refuses them by name (`UnsupportedKeywordError`), as before.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from jsonschema import validators

from searchdec.grammars.base import Check, CheckState, State, TokenizerInfo, Verdict

CHECKED = ("uniqueItems", "not", "contains", "minContains", "maxContains", "if", "then", "else")
CHECKED += ("dependentRequired", "dependentSchemas")
_KEEP_IN_GRAMMAR = ("format",)  # a date's format stays: the grammar writes its shape, the check its calendar


def _taken(node: dict) -> dict:
    """The keywords of `node` the check enforces (empty: none)."""
    taken = {key: node[key] for key in CHECKED if key in node}
    if taken.get("uniqueItems") is False:
        del taken["uniqueItems"]
    if "contains" not in taken:  # min/maxContains without contains mean nothing
        taken.pop("minContains", None)
        taken.pop("maxContains", None)
    if not any(key in taken for key in ("if",)):
        taken.pop("then", None)
        taken.pop("else", None)
    if node.get("format") == "date":
        taken["format"] = "date"
    return taken


def _children(node: Any, step: str | int) -> list[dict]:
    """The schema nodes (of those `split` walks) that apply to the member `step` (a key or an index) of a
    value that `node` applies to."""
    if not isinstance(node, dict):
        return []
    found: list[Any] = []
    if isinstance(step, str):
        matched = False
        if isinstance(node.get("properties"), dict) and step in node["properties"]:
            found.append(node["properties"][step])
            matched = True
        for pattern, sub in (node.get("patternProperties") or {}).items():
            try:
                if re.search(pattern, step):
                    found.append(sub)
                    matched = True
            except re.error:
                continue
        if not matched and isinstance(node.get("additionalProperties"), dict):
            found.append(node["additionalProperties"])
    else:
        prefix = node.get("prefixItems")
        items = node.get("items")
        if isinstance(items, list):  # draft 7 tuple form
            prefix, items = items, node.get("additionalItems")
        if isinstance(prefix, list) and step < len(prefix):
            found.append(prefix[step])
        elif isinstance(items, dict):
            found.append(items)
    return _with_all_of([sub for sub in found if isinstance(sub, dict)])


def _with_all_of(nodes: list[dict]) -> list[dict]:
    out: list[dict] = []
    pending = list(nodes)
    while pending:
        node = pending.pop(0)
        out.append(node)
        pending += [sub for sub in node.get("allOf") or () if isinstance(sub, dict)]
    return out


def split(schema: Any) -> tuple[Any, JsonCheck | None]:
    """`schema` without the keywords a check enforces (a copy), and the check (None when none is used)."""
    if not isinstance(schema, dict):
        return schema, None
    grammar = copy.deepcopy(schema)
    found = False
    pending = _with_all_of([grammar])
    seen: set[int] = set()
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if _taken(node):
            found = True
            for key in CHECKED:
                node.pop(key, None)
        for key in ("properties", "patternProperties"):
            if isinstance(node.get(key), dict):
                pending += _with_all_of([sub for sub in node[key].values() if isinstance(sub, dict)])
        for key in ("additionalProperties", "items", "additionalItems"):
            if isinstance(node.get(key), dict):
                pending += _with_all_of([node[key]])
        for key in ("prefixItems", "items"):
            if isinstance(node.get(key), list):
                pending += _with_all_of([sub for sub in node[key] if isinstance(sub, dict)])
    return (grammar, JsonCheck(schema)) if found else (schema, None)


class JsonCheck(Check):
    """The keywords `split` took out of `schema`, checked on every completed value they apply to."""

    def __init__(self, schema: dict) -> None:
        self.schema = schema
        cls = validators.validator_for(schema, default=validators.Draft202012Validator)
        self._root = cls(schema, format_checker=cls.FORMAT_CHECKER)
        self._validators: dict[int, Any] = {}
        taken = sorted({key for node in self._walk() for key in _taken(node)})
        self.name = "JSON Schema " + "/".join(taken)

    def _walk(self) -> list[dict]:
        out, pending, seen = [], _with_all_of([self.schema]), set()
        while pending:
            node = pending.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            out.append(node)
            for key in ("properties", "patternProperties"):
                if isinstance(node.get(key), dict):
                    pending += _with_all_of([s for s in node[key].values() if isinstance(s, dict)])
            for key in ("additionalProperties", "items", "additionalItems"):
                if isinstance(node.get(key), dict):
                    pending += _with_all_of([node[key]])
            for key in ("prefixItems", "items"):
                if isinstance(node.get(key), list):
                    pending += _with_all_of([s for s in node[key] if isinstance(s, dict)])
        return out

    def validator(self, node: dict):
        """The validator of the keywords taken from `node` (None: none), resolving `$ref` from the root."""
        if id(node) not in self._validators:
            taken = _taken(node)
            self._validators[id(node)] = self._root.evolve(schema=taken) if taken else None
        return self._validators[id(node)]

    def start(self, tokenizer: TokenizerInfo | None = None) -> JsonCheckState:
        return JsonCheckState(self, b"", (), None, None, False, False)

    def accepts(self, text: str | bytes) -> bool:
        """Whether a whole document passes the check (fed in one piece): for tests and validation."""
        data = text.encode() if isinstance(text, str) else text
        return self.start().feed(data, None).verdict is Verdict.OK


# A frame of the parse stack: (kind "{" or "[", start offset, schema nodes, key or None, next index,
# whether a key is expected next).
_SCALAR = frozenset(b"0123456789+-.eEtruefalsn")
_WHITESPACE = frozenset(b" \t\r\n")


class JsonCheckState(CheckState):
    """An incremental JSON parse of the output (the grammar guarantees its syntax) with, for each open
    value, the schema nodes that apply to it. Immutable: `feed` copies the (short) stack."""

    __slots__ = ("_check", "_text", "_stack", "_scalar", "_pending", "_done", "_violated")

    def __init__(self, check, text, stack, scalar, pending, done, violated) -> None:
        self._check = check
        self._text = text
        self._stack = stack  # tuple of frames
        self._scalar = scalar  # (start, nodes, in_string, escaped, is_key) of the scalar being read, or None
        self._pending = pending  # nodes of the next value (after a key's colon), or None
        self._done = done  # the root value is complete
        self._violated = violated

    @property
    def verdict(self) -> Verdict:
        if self._violated:
            return Verdict.VIOLATED
        if self._done:
            return Verdict.OK
        if not self._stack and self._scalar is not None and not self._scalar[2]:
            start, nodes = self._scalar[0], self._scalar[1]
            try:
                value = json.loads(self._text[start:])
            except ValueError:
                return Verdict.UNDECIDED
            return Verdict.OK if self._valid(nodes, value) else Verdict.UNDECIDED
        return Verdict.UNDECIDED

    def _valid(self, nodes, value) -> bool:
        for node in nodes:
            validator = self._check.validator(node)
            if validator is not None and not validator.is_valid(value):
                return False
        return True

    def feed(self, data: bytes, grammar: State | None) -> JsonCheckState:
        if self._violated or not data:
            return self
        parse = _Parse(self)
        parse.text = text = self._text + data
        for offset in range(len(self._text), len(text)):
            parse.byte(offset, text[offset])
            if parse.violated:
                break
        return JsonCheckState(
            self._check, text, tuple(parse.stack), parse.scalar, parse.pending, parse.done, parse.violated
        )


class _Parse:
    """The mutable working copy `JsonCheckState.feed` runs the bytes through."""

    def __init__(self, state: JsonCheckState) -> None:
        self.check = state._check
        self.text = state._text
        self.stack = list(state._stack)
        self.scalar = state._scalar
        self.pending = state._pending
        self.done = state._done
        self.violated = False

    def nodes_of_next(self) -> tuple:
        """Schema nodes of the value that starts now."""
        if not self.stack:
            return tuple(_with_all_of([self.check.schema]))
        kind, start, nodes, key, index, expecting = self.stack[-1]
        if kind == "{":
            return self.pending or ()
        return tuple(sub for node in nodes for sub in _children(node, index))

    def complete(self, start: int, end: int, nodes: tuple) -> None:
        """A value spanning text[start:end] is complete: check it, and count it in its parent."""
        if nodes and any(self.check.validator(node) is not None for node in nodes):
            value = json.loads(self.text[start:end])
            for node in nodes:
                validator = self.check.validator(node)
                if validator is not None and not validator.is_valid(value):
                    self.violated = True
                    return
        if not self.stack:
            self.done = True
            return
        kind, pstart, pnodes, key, index, expecting = self.stack[-1]
        if kind == "[":
            for node in pnodes:
                validator = self.check.validator(node)
                if validator is not None and "uniqueItems" in validator.schema:
                    items = json.loads(self.text[pstart:end] + b"]")
                    if not validator.evolve(schema={"uniqueItems": True}).is_valid(items):
                        self.violated = True
                        return
            self.stack[-1] = (kind, pstart, pnodes, key, index + 1, expecting)
        self.pending = None

    def byte(self, offset: int, b: int) -> None:
        if self.scalar is not None:
            start, nodes, in_string, escaped, is_key = self.scalar
            if in_string:
                if escaped:
                    self.scalar = (start, nodes, True, False, is_key)
                elif b == 0x5C:  # backslash
                    self.scalar = (start, nodes, True, True, is_key)
                elif b == 0x22:  # closing quote
                    self.scalar = None
                    if is_key:
                        kind, pstart, pnodes, _, index, _ = self.stack[-1]
                        key = json.loads(self.text[start : offset + 1])
                        self.stack[-1] = (kind, pstart, pnodes, key, index, False)
                        self.pending = tuple(sub for node in pnodes for sub in _children(node, key))
                    else:
                        self.complete(start, offset + 1, nodes)
                return
            if b in _SCALAR:
                return
            self.scalar = None
            self.complete(start, offset, nodes)
            if self.violated:
                return
        if b in _WHITESPACE or b == 0x3A:  # colon
            return
        if b == 0x2C:  # comma
            if self.stack and self.stack[-1][0] == "{":
                kind, pstart, pnodes, key, index, _ = self.stack[-1]
                self.stack[-1] = (kind, pstart, pnodes, None, index, True)
            return
        if b in (0x7D, 0x5D):  # } or ]
            kind, pstart, pnodes, *_ = self.stack.pop()
            self.complete(pstart, offset + 1, pnodes)
            return
        if b == 0x22:  # opening quote
            is_key = bool(self.stack) and self.stack[-1][0] == "{" and self.stack[-1][5]
            nodes = () if is_key else self.nodes_of_next()
            self.scalar = (offset, nodes, True, False, is_key)
            return
        if b in (0x7B, 0x5B):  # { or [
            nodes = self.nodes_of_next()
            self.stack.append(("{" if b == 0x7B else "[", offset, nodes, None, 0, b == 0x7B))
            self.pending = None
            return
        self.scalar = (offset, self.nodes_of_next(), False, False, False)
