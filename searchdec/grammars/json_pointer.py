"""Local `$ref` resolution in a JSON Schema: the one walk of a JSON pointer ("#", "#/a/b") that the
schema specs, the checks beyond the grammar and the any-order flattening all use."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote


def local_target(root: Any, ref: Any) -> Any:
    """The value a local `$ref` ("#" or "#/a/b", each part URL-decoded and `~1`/`~0` unescaped) names in
    `root`; None for a remote reference, an anchor, or a path that is not there."""
    if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
        return None
    node = root
    for part in ref[2:].split("/") if ref != "#" else ():
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node
