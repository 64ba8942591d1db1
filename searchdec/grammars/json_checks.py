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
from functools import cached_property
from typing import Any

from jsonschema import validators

from searchdec.grammars import json_flatten
from searchdec.grammars.base import Check, CheckState, State, TokenizerInfo, Verdict
from searchdec.grammars.json_pointer import local_target

CHECKED = ("uniqueItems", "not", "contains", "minContains", "maxContains", "if", "then", "else")
CHECKED += ("dependentRequired", "dependentSchemas")
_KEEP_IN_GRAMMAR = ("format",)  # a date's format stays: the grammar writes its shape, the check its calendar
# Keywords whose values are schemas: a map of them, a list of them, or one.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SCHEMA_ONE = ("additionalProperties", "items", "additionalItems", "not", "if", "then", "else", "contains")
_SCHEMA_ONE += ("propertyNames", "unevaluatedProperties", "unevaluatedItems")
_REGEX_META = set("\\.+*?()|[]{}^$#&-~")


def _subschemas(node: dict) -> list[dict]:
    """The schemas directly inside `node` (every keyword that holds one; `const`, `enum` and examples are data)."""
    found: list[Any] = []
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            found += node[key].values()
    for key in _SCHEMA_LISTS:
        if isinstance(node.get(key), list):
            found += node[key]
    for key in _SCHEMA_ONE:
        found.append(node.get(key))
    if isinstance(node.get("dependencies"), dict):  # draft 7: a schema or a list of names per key
        found += node["dependencies"].values()
    return [sub for sub in found if isinstance(sub, dict)]


def reorders(node: dict, applying: _Applying | None = None) -> bool:
    """Whether the grammar takes the object `node` describes in any key order: an object whose documents may
    hold two keys or more, with names that llguidance can keep apart from its own `patternProperties`
    (patterns must be disjoint there) and required names that some key schema admits. Its properties then
    become exact-name patterns and its `required` moves to the check (llguidance writes `properties` and
    required keys in schema order only)."""
    if any(key in node for key in ("anyOf", "oneOf", "allOf")):
        return False  # llguidance merges the object into each branch, and loses patternProperties there
    properties = node.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = node.get("required")
    required = [name for name in required if isinstance(name, str)] if isinstance(required, list) else []
    names = set(properties) | set(required)
    if not names:
        return False
    patterns = node.get("patternProperties")
    patterns = patterns if isinstance(patterns, dict) else {}
    extra = node.get("additionalProperties", True) is not False
    if len(names) < 2 and not extra and not patterns:
        return False
    try:
        compiled = [re.compile(pattern) for pattern in patterns]
    except re.error:
        return False
    if any(pattern.search(name) for pattern in compiled for name in properties):
        return False
    if not (extra or patterns or set(required) <= set(properties)):
        return False
    # a required key no schema admits: schema order, where llguidance finds the schema unsatisfiable as it
    # would without this module (or drops the object where it is optional)
    return unwritable_required(node, applying) is None


def _exact(name: str) -> str:
    """A regex (Rust syntax, as llguidance reads it) matching exactly `name`."""
    out = []
    for char in name:
        if char in _REGEX_META:
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{{{ord(char):x}}}")
        else:
            out.append(char)
    return "^" + "".join(out) + "$"


def _never(schema: Any, applying: _Applying | None, memo: dict[int, bool]) -> bool:
    """Whether no value can satisfy `schema` by its face: `false`, an empty `enum`, `not: {}` / `not: true`, an
    object with a required key no schema admits, or an `allOf` member or local `$ref` target that is one.
    llguidance finds deeper contradictions itself, but only in the `required` it is given. `memo` holds the
    answers so far by node (a node met again while its answer is pending counts as satisfiable)."""
    if schema is False:
        return True
    if not isinstance(schema, dict):
        return False
    if id(schema) in memo:
        return memo[id(schema)]
    memo[id(schema)] = False
    never = schema.get("enum") == [] or schema.get("not") in ({}, True)
    if not never and schema.get("type") == "object":
        never = unwritable_required(schema, applying, memo) is not None
    if not never:
        members = [sub for sub in schema.get("allOf") or () if isinstance(sub, (dict, bool))]
        target = applying.resolve(schema.get("$ref")) if applying is not None else None
        members += [target] if target is not None else []
        never = any(_never(sub, applying, memo) for sub in members)
    memo[id(schema)] = never
    return never


def unwritable_required(
    node: dict, applying: _Applying | None = None, memo: dict[int, bool] | None = None
) -> str | None:
    """The first name in `node`'s `required` that no key schema of the object admits (its property schema, the
    patterns that match it, else `additionalProperties`, is one no value satisfies); None when there is none."""
    required = node.get("required")
    if not isinstance(required, list):
        return None
    memo = {} if memo is None else memo
    properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
    patterns = node.get("patternProperties") if isinstance(node.get("patternProperties"), dict) else {}
    for name in required:
        if not isinstance(name, str):
            continue
        schemas = [properties[name]] if name in properties else []
        for pattern, sub in patterns.items():
            try:
                if re.search(pattern, name):
                    schemas.append(sub)
            except re.error:
                continue
        if not schemas:
            schemas.append(node.get("additionalProperties", True))
        if any(_never(sub, applying, memo) for sub in schemas):
            return name
    return None


def required_pointer(root: Any, name: str) -> str | None:
    """The JSON pointer of the first `required` list in `root` whose `name` no key schema of its object admits
    (to point an "unsatisfiable required property" error at it); None when there is none."""
    applying = _Applying(root)
    for node in _every_schema(root):
        if unwritable_required(node, applying) == name:
            return f"#{_pointer(root, node)}/required"
    return None


def _pointer(root: Any, target: dict) -> str:
    """The JSON pointer of the node `target` inside `root` ("" for the root; an error path, so a plain search)."""
    pending: list[tuple[Any, str]] = [(root, "")]
    seen: set[int] = set()
    while pending:
        node, pointer = pending.pop()
        if node is target:
            return pointer
        if id(node) in seen or not isinstance(node, (dict, list)):
            continue
        seen.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            pending.append((value, f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"))
    return "?"


def _in_any_order(node: dict) -> None:
    """Rewrite the object schema `node` (a copy) so that its keys may come in any order: its properties become
    exact-name `patternProperties` and `required` goes (the check enforces it, and refuses duplicate keys)."""
    node.pop("required", None)
    if not node.get("properties"):
        return
    patterns = {_exact(name): sub for name, sub in node["properties"].items()}
    patterns.update(node.get("patternProperties") or {})
    node["patternProperties"] = patterns
    node["properties"] = {}  # kept, empty: strict mode still sees an object schema here


class _Applying:
    """Which schema nodes apply to a value, in one schema document: the node itself, its `allOf` members and
    the targets of its local `$ref`s (a JSON pointer into the same document), transitively."""

    def __init__(self, root: Any) -> None:
        self.root = root

    def resolve(self, ref: Any) -> dict | None:
        """The node a local `$ref` ("#" or "#/a/b") names; None for any other reference."""
        node = local_target(self.root, ref)
        return node if isinstance(node, dict) else None

    def __call__(self, nodes: list[dict]) -> list[dict]:
        out: list[dict] = []
        seen: set[int] = set()
        pending = list(nodes)
        while pending:
            node = pending.pop(0)
            if id(node) in seen:
                continue
            seen.add(id(node))
            out.append(node)
            pending += [sub for sub in node.get("allOf") or () if isinstance(sub, dict)]
            target = self.resolve(node.get("$ref"))
            if target is not None:
                pending.append(target)
        return out

    def children(self, node: Any, step: str | int) -> list[dict]:
        """The schema nodes that apply to the member `step` (a key or an index) of a value that `node`
        applies to."""
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
        return self([sub for sub in found if isinstance(sub, dict)])

    def tracked(self) -> list[dict]:
        """Every node that applies to some value wherever the value is (the root, then through properties,
        patternProperties, additionalProperties, items, prefixItems, additionalItems, allOf and local `$ref`)."""
        out, pending, seen = [], self([self.root]) if isinstance(self.root, dict) else [], set()
        while pending:
            node = pending.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            out.append(node)
            for key in ("properties", "patternProperties"):
                if isinstance(node.get(key), dict):
                    pending += self([s for s in node[key].values() if isinstance(s, dict)])
            for key in ("additionalProperties", "items", "additionalItems"):
                if isinstance(node.get(key), dict):
                    pending += self([node[key]])
            for key in ("prefixItems", "items"):
                if isinstance(node.get(key), list):
                    pending += self([s for s in node[key] if isinstance(s, dict)])
        return out


def _every_schema(root: Any) -> list[dict]:
    """Every schema node of a document, reached through the keywords that hold schemas."""
    out, pending, seen = [], [root] if isinstance(root, dict) else [], set()
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        pending += _subschemas(node)
    return out


def _taken(node: dict) -> dict:
    """The keywords of `node` the check enforces beyond the grammar of `split` (empty: none); `required` of an
    object taken in any order, and `anyOf`/`oneOf` whose branches hold one, are added by `JsonCheck`."""
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


_OBJECT_KEYWORDS = ("properties", "patternProperties", "additionalProperties", "required")


def _pinned(root: Any) -> set[int]:
    """The object nodes that keep schema order: those whose `properties` a local `$ref` points into (e.g.
    "#/properties/a/items"), and those llguidance merges with another object schema (every `allOf` member,
    an `anyOf`/`oneOf` branch beside object keywords, and the targets of their `$ref`s): its merge of two
    object schemas loses `patternProperties`."""
    applying, pinned = _Applying(root), set()
    for node in _every_schema(root):
        ref = node.get("$ref")
        if isinstance(ref, str) and "/properties/" in ref and applying.resolve(ref) is not None:
            parts = ref.split("/")
            for end in range(1, len(parts)):
                if parts[end] == "properties":
                    parent = applying.resolve("/".join(parts[:end]))
                    if parent is not None:
                        pinned.add(id(parent))
        merged = [sub for sub in node.get("allOf") or () if isinstance(sub, dict)]
        if any(key in node for key in _OBJECT_KEYWORDS):
            for key in ("anyOf", "oneOf"):
                merged += [sub for sub in node.get(key) or () if isinstance(sub, dict)]
        pinned.update(id(sub) for sub in applying(merged))
    return pinned


def _one_of_in_grammar(node: dict, pinned: set[int]) -> bool:
    """Whether `node`'s `oneOf` goes to the check and the grammar gets it as `anyOf`: when a branch holds an
    object taken in any order (branches that differ only by the keys they require overlap then, and llguidance
    refuses a `oneOf` it cannot prove disjoint)."""
    if not isinstance(node.get("oneOf"), list) or "anyOf" in node:
        return False
    return any(id(sub) not in pinned and reorders(sub) for sub in _every_schema({"allOf": node["oneOf"]}))


def split(schema: Any, any_order: bool = True) -> tuple[Any, JsonCheck | None]:
    """`schema` without the keywords a check enforces, with every object in any key order and `oneOf` as `anyOf`
    (a copy), and the check (None when none of these applies: the schema itself then). `any_order=False` keeps
    objects and `oneOf` as they are (for a backend that cannot take the rewritten form)."""
    if not isinstance(schema, dict):
        return schema, None
    given = schema
    if not any_order and not any(_taken(node) for node in _Applying(schema).tracked()):
        return given, None  # nothing to take out: no copy (most schemas; the time to first mask)
    if any_order:  # one object schema where the schema spreads an object over several (grammars/json_flatten.py)
        schema = json_flatten.flatten(schema)
    grammar = copy.deepcopy(schema)
    found = False
    for node in _Applying(grammar).tracked():
        if _taken(node):
            found = True
            for key in CHECKED:
                node.pop(key, None)
    pinned = _pinned(grammar) if any_order else set()
    applying = _Applying(grammar)
    for node in _every_schema(grammar) if any_order else ():
        if id(node) not in pinned and reorders(node, applying):
            found = True
            _in_any_order(node)
        if _one_of_in_grammar(node, pinned):
            found = True
            node["anyOf"] = node.pop("oneOf")
    return (grammar, JsonCheck(schema, any_order)) if found else (given, None)


class JsonCheck(Check):
    """What `split` took out of `schema`'s grammar, checked on every completed value it applies to; and no
    object with a key twice."""

    def __init__(self, schema: dict, any_order: bool = True) -> None:
        self.schema = schema
        self.any_order = any_order
        self.applying = _Applying(schema)
        self._validators: dict[int, Any] = {}
        self._required: dict[int, frozenset[str]] = {}
        self._hides: dict[int, bool] = {}
        self._pinned = _pinned(schema) if any_order else set()
        taken = sorted({key for node in self.applying.tracked() for key in self.taken(node)} | {"duplicate keys"})
        self.name = "JSON Schema " + "/".join(taken)

    @cached_property
    def _root(self):
        """The validator of the whole schema (built on first use: compiling stays cheap)."""
        cls = validators.validator_for(self.schema, default=validators.Draft202012Validator)
        return cls(self.schema, format_checker=cls.FORMAT_CHECKER)

    def taken(self, node: dict) -> dict:
        """The keywords of `node` this check enforces: those `split` took out, `required` of an object the
        grammar takes in any order, `anyOf` whose branches hold such an object (or a `$ref`, or a `oneOf`), a
        `oneOf` (the grammar's is an `anyOf`), and a `$ref` this module cannot follow (the grammar may take its
        target in any order)."""
        taken = _taken(node)
        if self._reorders(node) and isinstance(node.get("required"), list) and node["required"]:
            taken["required"] = node["required"]
        if isinstance(node.get("anyOf"), list) and any(self._hides_reorder(sub) for sub in node["anyOf"]):
            taken["anyOf"] = node["anyOf"]
        if self.any_order and _one_of_in_grammar(node, self._pinned):
            taken["oneOf"] = node["oneOf"]
        if "$ref" in node and self.applying.resolve(node["$ref"]) is None:
            taken["$ref"] = node["$ref"]
        return taken

    def _hides_reorder(self, node: Any) -> bool:
        """Whether `node`, or a schema inside it, is taken in any order or holds a `$ref`."""
        if not isinstance(node, dict):
            return False
        if id(node) not in self._hides:
            self._hides[id(node)] = False  # a schema nests finitely; this only guards a re-entry
            self._hides[id(node)] = (
                self._reorders(node)
                or "$ref" in node
                or (self.any_order and _one_of_in_grammar(node, self._pinned))
                or any(self._hides_reorder(sub) for sub in _subschemas(node))
            )
        return self._hides[id(node)]

    def _reorders(self, node: dict) -> bool:
        """Whether `split` took `node` in any key order."""
        return self.any_order and id(node) not in self._pinned and reorders(node, self.applying)

    def validator(self, node: dict):
        """The validator of the keywords taken from `node` (None: none), resolving `$ref` from the root."""
        if id(node) not in self._validators:
            taken = self.taken(node)
            self._validators[id(node)] = self._root.evolve(schema=taken) if taken else None
        return self._validators[id(node)]

    def required(self, node: dict) -> frozenset[str]:
        """The keys an object `node` applies to must hold, when the grammar does not enforce them."""
        if id(node) not in self._required:
            self._required[id(node)] = frozenset(self.taken(node).get("required", ()))
        return self._required[id(node)]

    @cached_property
    def requires_keys(self) -> bool:
        """Whether some object must hold a key only this check enforces (the grammar takes it in any order)."""
        return any(self.required(node) for node in self.applying.tracked())

    def start(self, tokenizer: TokenizerInfo | None = None) -> JsonCheckState:
        closers = frozenset() if tokenizer is None else tokenizer.prepare("json-closers", lambda: _closers(tokenizer))
        return JsonCheckState(self, b"", (), None, None, False, False, closers)

    def accepts(self, text: str | bytes) -> bool:
        """Whether a whole document passes the check (fed in one piece): for tests and validation."""
        data = text.encode() if isinstance(text, str) else text
        return self.start().feed(data, None).verdict is Verdict.OK


def _closers(tokenizer: TokenizerInfo) -> frozenset[int]:
    """The tokens that, outside a string, close the innermost object or array: their bytes start with a
    closing brace, after whitespace (special tokens excluded)."""
    special = tokenizer.special_token_ids | tokenizer.eos_token_ids
    return frozenset(
        token
        for token, piece in enumerate(tokenizer.vocab_bytes)
        if piece.lstrip(b" \t\r\n")[:1] == b"}" and token not in special
    )


# A frame of the parse stack: (kind "{" or "[", start offset, schema nodes, key or None, next index,
# whether a key is expected next, the keys so far).
_SCALAR = frozenset(b"0123456789+-.eEtruefalsn")
_WHITESPACE = frozenset(b" \t\r\n")


class JsonCheckState(CheckState):
    """An incremental JSON parse of the output (the grammar guarantees its syntax) with, for each open
    value, the schema nodes that apply to it. Immutable: `feed` copies the (short) stack."""

    __slots__ = ("_check", "_text", "_stack", "_scalar", "_pending", "_done", "_violated", "_closers")

    def __init__(self, check, text, stack, scalar, pending, done, violated, closers) -> None:
        self._check = check
        self._text = text
        self._stack = stack  # tuple of frames
        self._scalar = scalar  # (start, nodes, in_string, escaped, is_key) of the scalar being read, or None
        self._pending = pending  # nodes of the next value (after a key's colon), or None
        self._done = done  # the root value is complete
        self._violated = violated
        self._closers = closers  # the tokenizer's tokens that close an object (see `_closers`)

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

    def refused(self) -> frozenset[int]:
        """The tokens that would close the innermost object while a key it requires is missing."""
        if self._violated or not self._stack or (self._scalar is not None and self._scalar[2]):
            return frozenset()
        kind, _, nodes, _, _, _, keys = self._stack[-1]
        if kind == "{" and any(not self._check.required(node) <= keys for node in nodes):
            return self._closers
        return frozenset()

    def completion(self) -> bytes | None:
        """For a closing walk (see `CheckState.completion`): the rest of a required key still missing from the
        innermost object, where a key may start (after its "{", a comma or a value; or inside a key whose start
        matches the name), or after the value of a number or literal; b"" (follow the grammar's walk) elsewhere,
        while the document is open; None when no object needs such a key."""
        if self._violated or self._done or not self._check.requires_keys:
            return None
        name = self._missing(self._stack[-1]) if self._stack else None
        if name is None:  # the grammar's walk may open or close an object that misses a key: step it
            return b""
        key = json.dumps(name, ensure_ascii=False).encode()
        scalar = self._scalar
        if scalar is not None and scalar[4]:  # in a key
            written = self._text[scalar[0] :]
            return key[len(written) :] + b":" if key.startswith(written) else b""
        if scalar is not None and scalar[2]:  # in a string value: the grammar closes it
            return b""
        if scalar is None and self._stack[-1][5]:  # a key may start here
            return key + b":"
        # after a value, or in a number or literal (the comma ends it where the grammar allows one already)
        return b"," + key + b":" if self._pending is None or scalar is not None else b""

    def _missing(self, frame) -> str | None:
        """The first key (in its `required` list) a "{" frame must still hold; None when it holds them all, or
        is an array."""
        if frame[0] != "{":
            return None
        for node in frame[2]:
            required = self._check.required(node)
            if required and not required <= frame[6]:
                return next(name for name in node["required"] if name in required and name not in frame[6])
        return None

    def _valid(self, nodes, value) -> bool:
        for node in nodes:
            validator = self._check.validator(node)
            if validator is not None and not validator.is_valid(value):
                return False
        return True

    def feed(self, data: bytes, grammar: State | None) -> JsonCheckState:
        if self._violated or not data:
            return self
        scalar = self._scalar
        if (scalar is None and not data.strip(b" \t\r\n")) or (
            scalar is not None and scalar[2] and not scalar[3] and b'"' not in data and b"\\" not in data
        ):  # whitespace, or the middle of a string: nothing changes but the text (the common token, fast)
            return JsonCheckState(
                self._check, self._text + data, self._stack, scalar, self._pending, self._done, False, self._closers
            )
        parse = _Parse(self)
        parse.text = text = self._text + data
        for offset in range(len(self._text), len(text)):
            parse.byte(offset, text[offset])
            if parse.violated:
                break
        return JsonCheckState(
            self._check,
            text,
            tuple(parse.stack),
            parse.scalar,
            parse.pending,
            parse.done,
            parse.violated,
            self._closers,
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
            return tuple(self.check.applying([self.check.schema]))
        kind, start, nodes, key, index, expecting, keys = self.stack[-1]
        if kind == "{":
            return self.pending or ()
        return tuple(sub for node in nodes for sub in self.check.applying.children(node, index))

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
        kind, pstart, pnodes, key, index, expecting, keys = self.stack[-1]
        if kind == "[":
            for node in pnodes:
                validator = self.check.validator(node)
                if validator is not None and "uniqueItems" in validator.schema:
                    items = json.loads(self.text[pstart:end] + b"]")
                    if not validator.evolve(schema={"uniqueItems": True}).is_valid(items):
                        self.violated = True
                        return
            self.stack[-1] = (kind, pstart, pnodes, key, index + 1, expecting, keys)
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
                        self.key(start, offset)
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
                kind, pstart, pnodes, key, index, _, keys = self.stack[-1]
                self.stack[-1] = (kind, pstart, pnodes, None, index, True, keys)
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
            self.stack.append(("{" if b == 0x7B else "[", offset, nodes, None, 0, b == 0x7B, frozenset()))
            self.pending = None
            return
        self.scalar = (offset, self.nodes_of_next(), False, False, False)

    def key(self, start: int, end: int) -> None:
        """The key spanning text[start:end + 1] is complete: a key the object already holds is a violation (JSON
        parsers disagree on which of its values counts)."""
        kind, pstart, pnodes, _, index, _, keys = self.stack[-1]
        key = json.loads(self.text[start : end + 1])
        if key in keys:
            self.violated = True
            return
        self.stack[-1] = (kind, pstart, pnodes, key, index, False, keys | {key})
        self.pending = tuple(sub for node in pnodes for sub in self.check.applying.children(node, key))
