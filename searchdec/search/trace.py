"""The trace of a search: every node it created, with its parent, tokens, log-probability, score and
fate, and the winning path. It exports as JSON (`to_json`) and as a self-contained HTML page
(`to_html`, no network access needed) that draws the tree: nodes coloured by score from red (worst)
to green (best), the winning path thick and outlined, a node's text and numbers on hover.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from searchdec.search.tree import Node


class Trace:
    """Records the nodes of one prompt's search tree."""

    def __init__(self, algorithm: str, params: dict | None = None, decode=None) -> None:
        self.algorithm = algorithm
        self.params = dict(params or {})
        self._decode = decode
        self._ids: dict[int, int] = {}
        self._records: list[dict] = []
        self._nodes: list[Node] = []  # kept so that ids stay unique while the trace lives
        self.best: list[int] = []
        self.stats: dict = {}

    def __len__(self) -> int:
        return len(self._records)

    def add(
        self, node: Node, score: float | None = None, status: str = "open", parent: Node | None = None, **extra
    ) -> int:
        """Record `node` (and any unrecorded ancestor); later calls update its fields. `parent`, when
        given, is the ancestor to draw it under (a step's start), holding all tokens in between."""
        key = id(node)
        if key in self._ids:
            record = self._records[self._ids[key]]
            if score is not None:
                record["score"] = _number(score)
            if status != "open":
                record["status"] = status
            record.update({k: _number(v) for k, v in extra.items()})
            return record["id"]
        above = parent if parent is not None else node.parent
        tokens = list(node.new_tokens)
        if parent is not None:
            tokens, current = [], node
            while current is not None and current is not parent:
                tokens[:0] = current.new_tokens
                current = current.parent
        record = {
            "id": len(self._records),
            "parent": None if above is None else self.add(above),
            "tokens": tokens,
            "logprob": _number(node.logprob),
            "depth": node.depth,
            "score": _number(score),
            "status": status,
            "finish_reason": node.finish_reason,
        }
        record.update({k: _number(v) for k, v in extra.items()})
        self._ids[key] = record["id"]
        self._records.append(record)
        self._nodes.append(node)
        return record["id"]

    def set_best(self, leaf: Node) -> None:
        """Mark the path from the root to `leaf` as the winner."""
        self.add(leaf)
        path = [self._ids[id(leaf)]]
        while self._records[path[-1]]["parent"] is not None:
            path.append(self._records[path[-1]]["parent"])
        self.best = path[::-1]

    def to_dict(self) -> dict:
        records = []
        for record, node in zip(self._records, self._nodes):
            out = dict(record)
            out["finish_reason"] = node.finish_reason or record["finish_reason"]
            if self._decode is not None:
                out["text"] = self._decode(record["tokens"])
            records.append(out)
        return {
            "algorithm": self.algorithm,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "stats": self.stats,
            "best": self.best,
            "nodes": records,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_html(self, title: str | None = None) -> str:
        title = title or f"searchdec trace: {self.algorithm}"
        data = self.to_json().replace("</", "<\\/")  # nothing in the data can close the script element
        return _HTML.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)

    def save(self, path: str | Path) -> Path:
        """Write the trace as HTML (`.html`/`.htm`) or JSON (anything else)."""
        path = Path(path)
        text = self.to_html() if path.suffix.lower() in (".html", ".htm") else self.to_json(indent=1)
        path.write_text(text, encoding="utf-8")
        return path


def _number(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    return value


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:13px system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{padding:8px 12px;border-bottom:1px solid #ddd;background:#fff}
#wrap{overflow:auto;height:calc(100vh - 110px)}
#tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #999;padding:6px 8px;
 max-width:480px;white-space:pre-wrap;font:12px ui-monospace,monospace;display:none;box-shadow:0 2px 6px #0003}
#best{padding:6px 12px;font:12px ui-monospace,monospace;white-space:pre-wrap;background:#fffbe6;
 border-bottom:1px solid #eee;max-height:60px;overflow:auto}
.legend span{display:inline-block;width:14px;height:10px;margin-right:2px}
</style></head><body>
<header><b id="algo"></b> <span id="params"></span> <span id="stats"></span>
 <span class="legend"> score: worst <span style="background:hsl(0,75%,50%)"></span><span
 style="background:hsl(60,75%,50%)"></span><span style="background:hsl(120,75%,40%)"></span> best ·
 winning path outlined</span></header>
<div id="best"></div>
<div id="wrap"><svg id="tree" xmlns="http://www.w3.org/2000/svg"></svg></div>
<div id="tip"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const nodes = data.nodes;
const byId = new Map(nodes.map(n => [n.id, n]));
const kids = new Map(nodes.map(n => [n.id, []]));
for (const n of nodes) if (n.parent !== null && kids.has(n.parent)) kids.get(n.parent).push(n.id);
const best = new Set(data.best);
document.getElementById("algo").textContent = data.algorithm;
document.getElementById("params").textContent = JSON.stringify(data.params);
document.getElementById("stats").textContent = JSON.stringify(data.stats);
document.getElementById("best").textContent = "winner: " +
  data.best.slice(1).map(i => byId.get(i).text || "").join("");
const scores = nodes.map(n => n.score).filter(s => typeof s === "number");
const lo = Math.min(...scores), hi = Math.max(...scores);
function colour(n) {
  if (typeof n.score !== "number") return "#bbb";
  const t = hi > lo ? (n.score - lo) / (hi - lo) : 1;
  return "hsl(" + Math.round(120 * t) + ",75%," + (45 - 5 * t) + "%)";
}
// Tidy layout: leaves take consecutive columns, a parent sits above the middle of its children.
const DX = 18, DY = 34, R = 5;
const x = new Map(), y = new Map();
let column = 0, maxDepth = 0;
const roots = nodes.filter(n => n.parent === null || !byId.has(n.parent)).map(n => n.id);
function place(root) {
  const stack = [[root, 0, false]];
  while (stack.length) {
    const [id, depth, done] = stack.pop();
    const children = kids.get(id);
    y.set(id, depth); maxDepth = Math.max(maxDepth, depth);
    if (!children.length) { x.set(id, column++); continue; }
    if (done) { x.set(id, (x.get(children[0]) + x.get(children[children.length - 1])) / 2); continue; }
    stack.push([id, depth, true]);
    for (let i = children.length - 1; i >= 0; i--) stack.push([children[i], depth + 1, false]);
  }
}
for (const r of roots) place(r);
const svg = document.getElementById("tree");
const NS = "http://www.w3.org/2000/svg";
svg.setAttribute("width", Math.max(200, column * DX + 40));
svg.setAttribute("height", (maxDepth + 1) * DY + 40);
const px = id => 20 + x.get(id) * DX, py = id => 20 + y.get(id) * DY;
const edges = document.createElementNS(NS, "g"), dots = document.createElementNS(NS, "g");
svg.appendChild(edges); svg.appendChild(dots);
for (const n of nodes) {
  if (n.parent === null || !byId.has(n.parent)) continue;
  const line = document.createElementNS(NS, "line");
  line.setAttribute("x1", px(n.parent)); line.setAttribute("y1", py(n.parent));
  line.setAttribute("x2", px(n.id)); line.setAttribute("y2", py(n.id));
  const win = best.has(n.id) && best.has(n.parent);
  line.setAttribute("stroke", win ? "#d4a017" : "#bbb");
  line.setAttribute("stroke-width", win ? 4 : 1);
  edges.appendChild(line);
}
const tip = document.getElementById("tip");
for (const n of nodes) {
  const c = document.createElementNS(NS, "circle");
  c.setAttribute("cx", px(n.id)); c.setAttribute("cy", py(n.id));
  c.setAttribute("r", best.has(n.id) ? R + 2 : R);
  c.setAttribute("fill", colour(n));
  c.setAttribute("stroke", best.has(n.id) ? "#000" : "none");
  c.setAttribute("stroke-width", 2);
  c.addEventListener("mousemove", e => {
    tip.style.display = "block"; tip.style.left = (e.clientX + 12) + "px"; tip.style.top = (e.clientY + 12) + "px";
    const fields = Object.entries(n).filter(([k]) => k !== "text" && k !== "tokens")
      .map(([k, v]) => k + ": " + (typeof v === "number" ? +v.toFixed(4) : v)).join("\\n");
    tip.textContent = JSON.stringify(n.text === undefined ? n.tokens : n.text) + "\\n" + fields;
  });
  c.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  dots.appendChild(c);
}
</script></body></html>
"""
