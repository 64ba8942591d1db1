"""One object schema where a JSON Schema spreads an object's keywords over several places, for objects taken in any
key order (`sd.json_schema(..., property_order="any")`, grammars/json_checks.py).

llguidance merges an object's `allOf` members, and the object keywords beside an `anyOf`/`oneOf` into each branch,
itself, and its merge loses the exact-name `patternProperties` the any-order form is written in; json_checks
therefore keeps such objects in schema order, and a valid document with its keys moved is refused. `flatten`
rewrites the schema, before json_checks does, into one with the same documents where no such merge is left:

- `allOf` members (a local `$ref` member inlined: a copy of its target) merge into the node that holds them;
- the object keywords beside an `anyOf`/`oneOf` (`properties`, `patternProperties`, `additionalProperties`,
  `required`) merge into each branch (`A and oneOf(B1, B2)` is `oneOf(A and B1, A and B2)`);
- an `enum`/`const` whose value is an object of two keys or more (whose JSON text fixes the key order) becomes
  the object schema of exactly that value (`{"enum": [v]}` per leaf: `const` is not draft 4);
- a property whose name a `patternProperties` pattern matches, with that pattern's schema (or none), goes: the
  pattern gives it the same schema, and the any-order form needs property names no pattern matches.

A merge happens only where it is exact (`merge`): keywords that read their siblings (`items` and
`additionalItems`, `minimum` and draft 4's `exclusiveMinimum`, `if`/`then`/`else`, ...) merge only when just one
side holds them or both hold the same; two `patternProperties` maps, `unevaluatedProperties`, `$id` and the like
are never merged. A node that a `$ref` points inside (other than into its `$defs`) is left as it is (the rewrite
would move the target), and so is a `$ref` already inlined on the path (a recursive schema), and a node whose
rewrite would leave object keywords beside branches it did not have (llguidance would merge them itself, and may
refuse the merge). What is not merged stays as before: the object keeps schema order.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any
from urllib.parse import unquote

from searchdec.grammars.json_pointer import local_target

OBJECT = ("properties", "patternProperties", "additionalProperties", "required")
ANNOTATIONS = frozenset(
    ("title", "description", "$comment", "examples", "default", "$schema", "readOnly", "writeOnly", "deprecated")
    + ("markdownDescription", "deprecationMessage", "errorMessage", "definitions", "$defs")
)
# Keywords that read one another: merged only when one side holds them, or both hold the same values.
_GROUPS = (
    ("items", "additionalItems", "prefixItems"),
    ("minimum", "exclusiveMinimum"),
    ("maximum", "exclusiveMaximum"),
    ("if", "then", "else"),
    ("contains", "minContains", "maxContains"),
)
_NEVER = frozenset(
    ("$id", "id", "$anchor", "$dynamicAnchor", "$dynamicRef", "$recursiveRef", "$recursiveAnchor", "$ref")
    + ("unevaluatedProperties", "unevaluatedItems")
)
_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_ONE = ("additionalProperties", "items", "additionalItems", "not", "if", "then", "else", "contains", "propertyNames")
MAX_INLINED = 256  # `$ref` targets copied in, per schema: a bound on the rewrite's size


class Inexact(Exception):
    """Two schemas whose conjunction this module does not write as one schema."""


def flatten(schema: Any) -> Any:
    """`schema` rewritten as the module docstring says (a copy), or `schema` itself where nothing applies."""
    if not isinstance(schema, dict):
        return schema
    out = copy.deepcopy(schema)
    _Flatten(out).run()
    return out if out != schema else schema


def merge(a: dict, b: dict) -> dict:
    """One schema holding exactly the values both `a` and `b` hold; `Inexact` where this module cannot write it
    (see the module docstring). `definitions`/`$defs` are `a`'s: `b` is an `allOf` member or a copy."""
    if any(key in _NEVER for key in (*a, *b)):
        raise Inexact("keywords that name or reach other schemas")
    out: dict = {}
    grouped = {key for group in _GROUPS for key in group}
    for group in _GROUPS:
        ours = {key: a[key] for key in group if key in a}
        theirs = {key: b[key] for key in group if key in b}
        if ours and theirs and ours != theirs:
            raise Inexact(f"both sides hold {'/'.join(group)}")
        out.update(ours or theirs)
    for key in dict.fromkeys([*a, *b]):
        if key in grouped or key in OBJECT:
            continue
        if key in ANNOTATIONS:
            out[key] = a.get(key, b.get(key))
        elif key == "type" and key in a and key in b:
            out["type"] = _both_types(a["type"], b["type"])
        elif key == "allOf":
            members = [side.get("allOf", []) for side in (a, b)]
            if not all(isinstance(side, list) for side in members):
                raise Inexact("an allOf that is not a list")
            out["allOf"] = members[0] + members[1]
        elif key in a and key in b and a[key] != b[key]:
            raise Inexact(f"both sides hold {key}")
        else:
            out[key] = a.get(key, b.get(key))
    out.update(_merge_object(a, b))
    return out


def _both_types(a: Any, b: Any) -> Any:
    ours, theirs = ([a] if isinstance(a, str) else a), ([b] if isinstance(b, str) else b)
    if not isinstance(ours, list) or not isinstance(theirs, list):
        raise Inexact("a type that is not a name or a list of names")
    both = [name for name in ours if name in theirs]
    if "integer" not in both and (
        ("integer" in ours and "number" in theirs) or ("number" in ours and "integer" in theirs)
    ):
        both.append("integer")
    if not both:
        raise Inexact("types with nothing in common")
    return both[0] if len(both) == 1 else both


def _merge_object(a: dict, b: dict) -> dict:
    """`properties`, `patternProperties`, `additionalProperties` and `required` of the conjunction: a key's schema
    is every schema either side gives it (its property, else the patterns matching it, else the side's
    `additionalProperties`)."""
    if not any(key in side for side in (a, b) for key in OBJECT):
        return {}
    sides = []
    for side in (a, b):
        properties, patterns = side.get("properties", {}), side.get("patternProperties", {})
        required = side.get("required", [])
        if not isinstance(properties, dict) or not isinstance(patterns, dict) or not isinstance(required, list):
            raise Inexact("an object keyword of the wrong shape")
        sides.append((properties, patterns, side.get("additionalProperties", True), required))
    (props_a, patterns_a, extra_a, required_a), (props_b, patterns_b, extra_b, required_b) = sides
    if patterns_a and patterns_b:
        raise Inexact("patternProperties on both sides")
    if (patterns_a and not _trivial(extra_b)) or (patterns_b and not _trivial(extra_a)):
        raise Inexact("patternProperties on one side beside additionalProperties on the other")
    out: dict = {}
    names = list(dict.fromkeys([*props_a, *props_b]))
    if names or "properties" in a or "properties" in b:
        out["properties"] = {
            name: _conjunction(
                _applies(props_a, patterns_a, extra_a, name) + _applies(props_b, patterns_b, extra_b, name)
            )
            for name in names
        }
    if patterns_a or patterns_b:
        out["patternProperties"] = patterns_a or patterns_b
    if "additionalProperties" in a or "additionalProperties" in b:
        out["additionalProperties"] = _conjunction([extra_a, extra_b])
    if required_a or required_b:
        out["required"] = list(dict.fromkeys([*required_a, *required_b]))
    return out


def _applies(properties: dict, patterns: dict, extra: Any, name: str) -> list:
    """The schemas one side gives the key `name` beyond the patterns the merged object keeps."""
    if name in properties:
        return [properties[name]]
    for pattern in patterns:
        try:
            if re.search(pattern, name):
                return []  # the merged object keeps these patterns: they still apply to `name`
        except re.error as error:
            raise Inexact(f"a pattern Python cannot read: {pattern!r}") from error
    return [extra]


def _trivial(schema: Any) -> bool:
    return schema is True or (isinstance(schema, dict) and set(schema) <= ANNOTATIONS)


def _conjunction(schemas: list) -> Any:
    """One schema for all of `schemas`: an `allOf` of those that say something (the walk merges it later)."""
    if any(schema is False for schema in schemas):
        return False
    kept, seen = [], set()
    for schema in schemas:
        text = json.dumps(schema, sort_keys=True)
        if not _trivial(schema) and text not in seen:
            seen.add(text)
            kept.append(schema)
    if not kept:
        return {}
    return kept[0] if len(kept) == 1 else {"allOf": kept}


def structural(value: Any) -> dict:
    """The schema of exactly `value` (jsonschema's equality), its objects' keys in any order."""
    if isinstance(value, dict):
        out: dict = {"type": "object", "properties": {key: structural(item) for key, item in value.items()}}
        if value:
            out["required"] = list(value)
        out["additionalProperties"] = False
        return out
    return {"enum": [value]}


def _ordered_object(value: Any) -> bool:
    """Whether `value`'s JSON text fixes a key order: it holds an object of two keys or more, not inside an array."""
    return isinstance(value, dict) and (len(value) > 1 or any(_ordered_object(item) for item in value.values()))


class _Flatten:
    """The walk over one schema document (rewritten in place)."""

    def __init__(self, root: dict) -> None:
        self.root = root
        self.inlined = 0
        self.targets = [_pointer_of(ref) for ref in _refs(root)]

    def run(self) -> None:
        pending: list[tuple[dict, str, frozenset[str]]] = [(self.root, "", frozenset())]
        while pending:
            node, pointer, chain = pending.pop()
            if _spread(node) and not self._pointed_into(pointer):
                given = copy.deepcopy(node)
                chain = self._rewrite(node, chain)
                if _beside_branches(node) and not _beside_branches(given):  # llguidance merges it again: undo
                    node.clear()
                    node.update(given)
            for key, child in _children(node):
                pending.append((child, f"{pointer}/{key}", chain))

    def _pointed_into(self, pointer: str) -> bool:
        """Whether a `$ref` names a schema inside the node at `pointer`, other than in its `$defs`."""
        for target in self.targets:
            if target is not None and target.startswith(pointer + "/"):
                if target[len(pointer) + 1 :].split("/")[0] not in ("definitions", "$defs"):
                    return True
        return False

    def _rewrite(self, node: dict, chain: frozenset[str]) -> frozenset[str]:
        """Merge `node`'s `allOf` members and push its object keywords into its branches, until neither changes
        it; the `$ref`s inlined on the way join `chain`."""
        for _ in range(64):  # each round merges one nesting level of allOf; schemas nest far less
            changed = _enum_as_object(node) | _patterns_cover_properties(node)
            if isinstance(node.get("allOf"), list):
                changed, chain = self._merge_all_of(node, chain)
            if self._into_branches(node, chain):
                changed = True
            if not changed:
                break
        return chain

    def _resolved(self, member: Any, chain: frozenset[str]) -> tuple[Any, frozenset[str]]:
        """`member`, or a copy of the target of a local `$ref` member (with annotations only beside it) not inlined
        on this path yet; `Inexact` for any other `$ref`."""
        if not isinstance(member, dict) or "$ref" not in member:
            return member, chain
        ref = member["$ref"]
        if not set(member) - {"$ref"} <= ANNOTATIONS or not isinstance(ref, str) or ref in chain:
            raise Inexact("a $ref beside other keywords, or recursive")
        target = _resolve(self.root, ref)
        if target is None or self.inlined >= MAX_INLINED:
            raise Inexact("a $ref this module does not follow")
        self.inlined += 1
        target = copy.deepcopy(target) if isinstance(target, dict) else target
        if isinstance(target, dict):
            for key in ("definitions", "$defs", "$schema"):
                target.pop(key, None)
            _enum_as_object(target)
        return target, chain | {ref}

    def _merge_all_of(self, node: dict, chain: frozenset[str]) -> tuple[bool, frozenset[str]]:
        members = node.pop("allOf")
        merged, left = dict(node), []
        for member in members:
            try:
                part, after = self._resolved(member, chain)
                if part is True:
                    continue
                if part is False or not isinstance(part, dict):
                    raise Inexact("not an object schema")
                merged, chain = merge(merged, part), after
            except Inexact:
                left.append(member)
        if left:
            merged["allOf"] = [*(merged.get("allOf") or []), *left]
        changed = merged.get("allOf") != members
        node.clear()
        node.update(merged)
        return changed, chain

    def _into_branches(self, node: dict, chain: frozenset[str]) -> bool:
        own = {key: node[key] for key in OBJECT if key in node}
        if not own or ("anyOf" in node) == ("oneOf" in node) or "$ref" in node:
            return False
        key = "anyOf" if "anyOf" in node else "oneOf"
        if not isinstance(node[key], list) or not node[key]:
            return False
        branches = []
        try:
            for branch in node[key]:
                part, _ = self._resolved(branch, chain)
                if part is False:
                    branches.append(False)
                elif part is True:
                    branches.append(copy.deepcopy(own))
                elif isinstance(part, dict):
                    branches.append(merge(part, copy.deepcopy(own)))
                else:
                    raise Inexact("not a schema")
        except Inexact:
            return False
        for name in own:
            del node[name]
        node[key] = branches
        return True


def _patterns_cover_properties(node: dict) -> bool:
    """Drop each property whose name a `patternProperties` pattern matches and whose schema that pattern's schema
    already is (or `{}`): the pattern gives the key the same schema, and the any-order form needs names its patterns
    do not match (JSONSchemaBench's `"patternProperties": {".*": S}, "properties": {"basic": S}`). Whether it did."""
    properties, patterns = node.get("properties"), node.get("patternProperties")
    if not isinstance(properties, dict) or not isinstance(patterns, dict) or not patterns:
        return False
    covered = []
    for name, sub in properties.items():
        try:
            matching = [schema for pattern, schema in patterns.items() if re.search(pattern, name)]
        except re.error:
            return False
        if matching and (_trivial(sub) or any(sub == schema for schema in matching)):
            covered.append(name)
    for name in covered:
        del properties[name]
    return bool(covered)


def _spread(node: dict) -> bool:
    """Whether a rewrite may apply to `node`: an `allOf`, object keywords beside branches, an object `enum`/`const`."""
    values = [node["const"]] if "const" in node else node.get("enum")
    ordered = isinstance(values, list) and any(_ordered_object(value) for value in values)
    covers = isinstance(node.get("patternProperties"), dict) and isinstance(node.get("properties"), dict)
    return isinstance(node.get("allOf"), list) or _beside_branches(node) or ordered or covers


def _beside_branches(node: dict) -> bool:
    """Whether `node` holds object keywords beside `anyOf`/`oneOf` branches (which llguidance merges itself)."""
    return any(key in node for key in OBJECT) and ("anyOf" in node or "oneOf" in node)


def _enum_as_object(node: dict) -> bool:
    """An `enum`/`const` holding an object whose JSON text fixes a key order becomes its object schema: an `allOf`
    member for one value (the walk merges it), an `anyOf` for several. Whether it did."""
    values = [node["const"]] if "const" in node else node.get("enum")
    if not isinstance(values, list) or not any(_ordered_object(value) for value in values):
        return False
    if "enum" in node and "const" in node:
        return False  # both: rare, left as they are
    if len(values) == 1:
        node.pop("const", None)
        node.pop("enum", None)
        node["allOf"] = [*(node.get("allOf") or []), structural(values[0])]
        return True
    if "anyOf" in node:
        return False
    del node["enum"]
    plain = [value for value in values if not _ordered_object(value)]
    branches = [structural(value) for value in values if _ordered_object(value)]
    node["anyOf"] = branches + ([{"enum": plain}] if plain else [])
    return True


def _children(node: dict) -> list[tuple[str, dict]]:
    """The schemas directly inside `node`, with the pointer step to each."""
    out: list[tuple[str, Any]] = []
    for key in _MAPS:
        if isinstance(node.get(key), dict):
            out += [(f"{key}/{_escape(name)}", sub) for name, sub in node[key].items()]
    for key in _LISTS:
        if isinstance(node.get(key), list):
            out += [(f"{key}/{index}", sub) for index, sub in enumerate(node[key])]
    for key in _ONE:
        out.append((key, node.get(key)))
    if isinstance(node.get("dependencies"), dict):
        out += [(f"dependencies/{_escape(name)}", sub) for name, sub in node["dependencies"].items()]
    return [(key, sub) for key, sub in out if isinstance(sub, dict)]


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _refs(root: Any) -> list[str]:
    out, pending = [], [root]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                out.append(node["$ref"])
            pending += node.values()
        elif isinstance(node, list):
            pending += node
    return out


def _pointer_of(ref: str) -> str | None:
    """The JSON pointer (escaped as `_children` writes it) a local `$ref` names; None for any other reference."""
    if not ref.startswith("#") or (len(ref) > 1 and ref[1] != "/"):
        return None
    return unquote(ref[1:])


def _resolve(root: Any, ref: str) -> Any:
    """The schema a local `$ref` ("#" or "#/a/b") names; None for any other reference or a missing one."""
    node = local_target(root, ref)
    return node if isinstance(node, (dict, bool)) else None
