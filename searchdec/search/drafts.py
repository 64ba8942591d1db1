"""Draft sources for speculative decoding: what a cheap guesser proposes for the target to verify.

A source (`PromptLookup`, `SuffixDraft`, `SelfSpeculative`, a draft `Model`) is a frozen spec whose
`start(target, spec)` gives a `Drafter` for one prompt. `Drafter.propose` returns a `DraftTree`: the
drafted tokens as a trie hanging off the accepted text (a chain when one draft is asked for), each
node's children listed in the order they were drawn (`draws`, repeats included) and, when they were
sampled from a model, the distribution they were drawn from (`q`); deterministic drafts (lookups, a
model's arg-max) have none, a point mass. Under a constraint every drafted token is allowed by the
grammar state after the tokens above it (a lookup continuation is cut at the first that is not; a
model drafts from its masked distribution). Verification (search/speculative.py) forwards the whole
tree in one target call and keeps the longest path the acceptance rule admits.

Sources:
- `PromptLookup`: the tokens after earlier occurrences of the text's last n-gram (Saxena 2023,
  "prompt lookup decoding"); with several drafts, the continuations of several occurrences at once.
- `SuffixDraft` (`draft="suffix"`): suffix automata over the prompt and output so far and over this
  source's earlier prompts and outputs (SAM decoding, Hu et al., arXiv 2411.10666; SuffixDecoding,
  Oliaro et al., arXiv 2411.04975): the longest suffix of the text seen before picks the
  continuation, and the draft runs as far as the match was long (`factor` tokens per matched token,
  up to `max_depth`), so repeated agent and extraction patterns speculate far ahead.
- a draft `Model` sharing the target's tokenizer, or `SelfSpeculative(layers)`, the target's first
  layers and its own head (LayerSkip-style early exit, Elhoushi et al., arXiv 2404.16710, untrained):
  one batched draft forward per tree level; greedy drafts are the top `width` first tokens each
  continued by arg-max, sampled drafts `width` independent sequences (trie-merged), as SpecTr and
  SpecInfer draw them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from searchdec.grammars.base import apply_masks
from searchdec.models.model import Model
from searchdec.search.tree import Node

ROOT = -1  # the parent index of the tree's first tokens: the accepted text


class DraftTree:
    """Drafted tokens as a trie over the accepted text: `tokens[j]` hangs off `parents[j]` (ROOT: the
    text itself), each after its parent. `draws[v]` lists node v's children's tokens in the order
    they were drawn (repeats kept: they matter to the multi-draft sampling rule); `q[v]`, when set,
    the distribution they were drawn from independently."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.draws: dict[int, list[int]] = {}
        self.q: dict[int, torch.Tensor] = {}
        self._children: dict[int, dict[int, int]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, parent: int, token: int) -> int:
        """Node for `token` under `parent` (made if new), recording the draw."""
        self.draws.setdefault(parent, []).append(token)
        kids = self._children.setdefault(parent, {})
        if token not in kids:
            kids[token] = len(self.tokens)
            self.tokens.append(token)
            self.parents.append(parent)
        return kids[token]

    def add_path(self, parent: int, tokens: list[int]) -> int:
        """Append `tokens` as a path below `parent` (sharing existing nodes); its last node's index."""
        for token in tokens:
            parent = self.add(parent, token)
        return parent

    def graft(self, other: DraftTree, at: int) -> None:
        """Hang `other`'s nodes below node `at` (ROOT: the root), keeping its draws and distributions."""
        if at == ROOT and not self.tokens:
            self.tokens, self.parents, self.draws = other.tokens, other.parents, other.draws
            self.q, self._children = other.q, other._children
            return
        offset = len(self.tokens)
        shift = {ROOT: at, **{j: offset + j for j in range(len(other.tokens))}}
        self.tokens += other.tokens
        self.parents += [shift[parent] for parent in other.parents]
        for node, draws in other.draws.items():
            self.draws.setdefault(shift[node], []).extend(draws)
        for node, q in other.q.items():
            self.q[shift[node]] = q
        for node, kids in other._children.items():
            self._children.setdefault(shift[node], {}).update({t: shift[j] for t, j in kids.items()})

    def children(self, node: int) -> dict[int, int]:
        """Token -> node index of `node`'s children."""
        return self._children.get(node, {})

    def path(self, node: int) -> list[int]:
        """Node indices from the root's child down to `node`."""
        indices = []
        while node != ROOT:
            indices.append(node)
            node = self.parents[node]
        return indices[::-1]

    @property
    def is_chain(self) -> bool:
        return self.parents == list(range(-1, len(self.parents) - 1))

    def depth(self) -> int:
        depths: list[int] = []
        for parent in self.parents:
            depths.append(1 if parent == ROOT else depths[parent] + 1)
        return max(depths, default=0)


class Drafter:
    """One prompt's drafter. `propose` drafts a tree after `context` (prompt and accepted output)
    of depth at most `limit` (`k`: the schedule's draft length; `width`: how many drafts); `observe`
    sees the target's logits of each verified tree ([1 + len(tree), vocab]: after the text, after
    each node); `close` ends the prompt with its whole token sequence."""

    def propose(self, context: list[int], k: int, limit: int, width: int, state, sample, generator) -> DraftTree:
        raise NotImplementedError

    def observe(self, tree: DraftTree, logits: torch.Tensor) -> None:
        """Nothing by default (lookahead decoding reads its Jacobi iterates here)."""

    def close(self, tokens: list[int]) -> None:
        """Nothing by default (a suffix source records the prompt and output for later calls)."""


def allowed_prefix(tokens: list[int], state) -> list[int]:
    """The longest prefix of `tokens` the grammar `state` allows, ending where the grammar finishes."""
    if state is None:
        return list(tokens)
    kept = []
    for token in tokens:
        if not state.allows(token):
            break
        kept.append(token)
        state = state.advance(token)
        if state.finished:
            break
    return kept


def add_continuations(tree: DraftTree, continuations: list[list[int]], state, width: int) -> DraftTree:
    """Up to `width` distinct, non-empty, grammar-allowed continuations added as paths from the root."""
    seen: set[tuple[int, ...]] = set()
    for follow in continuations:
        follow = allowed_prefix(follow, state)
        if follow and tuple(follow) not in seen:
            seen.add(tuple(follow))
            tree.add_path(ROOT, follow)
            if len(seen) == width:
                break
    return tree


# --- prompt lookup -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptLookup:
    """Drafts the tokens that followed the most recent earlier occurrence of the text's last n-gram
    (n from `max_ngram` down to `min_ngram`); no model, so q is a point mass. With `width` drafts,
    the continuations of the `width` most recent occurrences with distinct continuations, longest
    n-grams first."""

    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram}, {self.max_ngram}")

    def start(self, target, spec) -> Drafter:
        return _LookupDrafter(self)


class _LookupDrafter(Drafter):
    def __init__(self, source: PromptLookup) -> None:
        self.source = source

    def propose(self, context, k, limit, width, state, sample, generator) -> DraftTree:
        length = min(k, limit)
        found: list[list[int]] = []
        for n in range(min(self.source.max_ngram, len(context) - 1), self.source.min_ngram - 1, -1):
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start : start + n] == tail:
                    follow = context[start + n : start + n + length]
                    if follow and follow not in found:
                        found.append(follow)
                        if len(found) == width:
                            return add_continuations(DraftTree(), found, state, width)
        return add_continuations(DraftTree(), found, state, width)


# --- suffix automata -----------------------------------------------------------------------------


class SuffixAutomaton:
    """An online suffix automaton (Blumer et al. 1985) over token ids: every substring of the text so
    far is a path from state 0; `link` is the suffix link, `length` the longest string of a state.
    Each state remembers where its strings last ended (`recent`) and ended before that
    (`previous`), updated up to `RECENT_DEPTH` suffix links deep per token (deeper ones keep an
    older, still genuine, end: drafts are guesses, verification keeps them lossless). Negative
    ids are separators that no draft crosses."""

    RECENT_DEPTH = 32

    def __init__(self) -> None:
        self.text: list[int] = []
        self.next: list[dict[int, int]] = [{}]
        self.link = [-1]
        self.length = [0]
        self.recent = [-1]
        self.previous = [-1]
        self.last = 0

    def _state(self, length: int, link: int, nxt: dict[int, int], recent: int, previous: int) -> int:
        self.next.append(nxt)
        self.link.append(link)
        self.length.append(length)
        self.recent.append(recent)
        self.previous.append(previous)
        return len(self.length) - 1

    def extend(self, token: int) -> None:
        position = len(self.text)
        self.text.append(token)
        current = self._state(self.length[self.last] + 1, 0, {}, position, -1)
        p = self.last
        while p != -1 and token not in self.next[p]:
            self.next[p][token] = current
            p = self.link[p]
        if p != -1:
            q = self.next[p][token]
            if self.length[p] + 1 == self.length[q]:
                self.link[current] = q
            else:
                clone = self._state(
                    self.length[p] + 1, self.link[q], dict(self.next[q]), self.recent[q], self.previous[q]
                )
                while p != -1 and self.next[p].get(token) == q:
                    self.next[p][token] = clone
                    p = self.link[p]
                self.link[q] = self.link[current] = clone
        self.last = current
        state, hops = self.link[current], 0
        while state > 0 and hops < self.RECENT_DEPTH:
            if self.recent[state] != position:
                self.previous[state], self.recent[state] = self.recent[state], position
            state, hops = self.link[state], hops + 1

    def extend_many(self, tokens: list[int]) -> None:
        for token in tokens:
            self.extend(token)

    def step(self, state: int, matched: int, token: int) -> tuple[int, int]:
        """The longest match after `token`, from the match (`state`, `matched` tokens) before it."""
        while state > 0 and token not in self.next[state]:
            state = self.link[state]
            matched = self.length[state]
        if token in self.next[state]:
            return self.next[state][token], matched + 1
        return 0, 0

    def continuations(self, state: int, matched: int, before: int, limit: int) -> list[tuple[int, int]]:
        """(match length, end position) of earlier occurrences of the matched suffix and of its shorter
        suffixes, longest first; only ends before position `before` count."""
        found: list[tuple[int, int]] = []
        while state > 0:
            for end in (self.recent[state], self.previous[state]):
                if 0 <= end < before - 1 and all(end != e for _, e in found):
                    found.append((min(matched, self.length[state]), end))
            if len(found) >= limit:
                break
            state = self.link[state]
            matched = self.length[state]
        return found

    def follow(self, end: int, length: int) -> list[int]:
        """Up to `length` tokens after position `end`, stopping at a separator."""
        out = []
        for token in self.text[end + 1 : end + 1 + length]:
            if token < 0:
                break
            out.append(token)
        return out


@dataclass(frozen=True)
class SuffixDraft:
    """`sd.Speculative(draft="suffix")`, or `draft=sd.SuffixDraft(...)` to share one history across
    specs: drafts the continuation of the longest suffix of the text seen before, in the prompt and
    output so far or in an earlier call's prompt and output through this source (up to
    `history_tokens` of them, oldest dropped first; kept per model). A match of m tokens drafts
    min(max_depth, max(k, factor * m)) tokens, so a long repeat speculates far ahead."""

    max_depth: int = 32
    factor: float = 1.0
    min_match: int = 1
    history_tokens: int = 1 << 16
    histories: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {self.max_depth}")
        if not self.factor > 0:
            raise ValueError(f"factor must be > 0, got {self.factor}")
        if self.min_match < 1:
            raise ValueError(f"min_match must be >= 1, got {self.min_match}")
        if self.history_tokens < 0:
            raise ValueError(f"history_tokens must be >= 0, got {self.history_tokens}")

    def start(self, target, spec) -> Drafter:
        history = self.histories.setdefault(target.name, _History(self.history_tokens))
        return _SuffixDrafter(self, history)


class _History:
    """Earlier calls' prompts and outputs in one suffix automaton, separated by distinct negative ids."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.documents: list[list[int]] = []
        self.automaton = SuffixAutomaton()

    def add(self, tokens: list[int]) -> None:
        if not tokens or self.max_tokens == 0:
            return
        self.documents.append(list(tokens[-self.max_tokens :]))
        if sum(len(d) + 1 for d in self.documents) <= self.max_tokens:
            self._append(self.documents[-1])
            return
        while sum(len(d) + 1 for d in self.documents) > self.max_tokens // 2 and len(self.documents) > 1:
            self.documents.pop(0)
        self.automaton = SuffixAutomaton()
        for document in self.documents:
            self._append(document)

    def _append(self, document: list[int]) -> None:
        self.automaton.extend_many(document)
        self.automaton.extend(-1 - len(self.automaton.text))  # a separator no other position shares


class _SuffixDrafter(Drafter):
    def __init__(self, source: SuffixDraft, history: _History) -> None:
        self.source = source
        self.history = history
        self.local = SuffixAutomaton()  # the prompt and output so far
        self.seen = 0  # context tokens fed to both automata
        self.match = (0, 0)  # (state, matched length) of the context's suffix in the history
        self.automaton = history.automaton

    def propose(self, context, k, limit, width, state, sample, generator) -> DraftTree:
        if self.automaton is not self.history.automaton:  # rebuilt by another prompt ending
            self.automaton, self.seen, self.match, self.local = self.history.automaton, 0, (0, 0), SuffixAutomaton()
        for token in context[self.seen :]:
            self.local.extend(token)
            self.match = self.automaton.step(*self.match, token)
        self.seen = len(context)
        local = self.local.continuations(self.local.last, len(context), len(context), width)
        found = [(m, 0, end) for m, end in local]
        found += [
            (m, 1, end) for m, end in self.automaton.continuations(*self.match, len(self.automaton.text) + 1, width)
        ]
        found.sort(key=lambda item: (-item[0], item[1]))
        continuations = []
        for matched, where, end in found:
            if matched < self.source.min_match:
                continue
            length = min(limit, self.source.max_depth, max(k, int(self.source.factor * matched)))
            automaton = self.local if where == 0 else self.automaton
            continuations.append(automaton.follow(end, length))
        return add_continuations(DraftTree(), continuations, state, width)

    def close(self, tokens: list[int]) -> None:
        self.history.add(tokens)


# --- draft models --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfSpeculative:
    """The target's first `layers` decoder layers and its output head, as the draft model."""

    layers: int

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")

    def start(self, target, spec) -> Drafter:
        return ModelDrafter(early_exit_model(target, self.layers), target)


def early_exit_model(target, layers: int) -> Model:
    """An sd.Model running only the first `layers` layers of `target` (weights shared, not copied)."""
    hf = getattr(target, "hf", None)
    if hf is None:
        raise ValueError(
            f"early layers of {target!r} cannot be taken: that needs the torch runtime (a Hugging Face model); "
            "give a separate draft/amateur model instead"
        )
    inner = getattr(hf, "model", None)
    if inner is None or not hasattr(inner, "layers"):
        raise ValueError(f"cannot take early layers of {type(hf).__name__}: no .model.layers")
    if not layers < len(inner.layers):
        raise ValueError(f"layers must be below the target's {len(inner.layers)} layers, got {layers}")
    shallow_inner = copy.copy(inner)
    shallow_inner._modules = dict(inner._modules)
    shallow_inner.layers = torch.nn.ModuleList(list(inner.layers)[:layers])
    shallow_inner.config = copy.copy(inner.config)
    shallow_inner.config.num_hidden_layers = layers
    if getattr(shallow_inner.config, "layer_types", None):
        shallow_inner.config.layer_types = shallow_inner.config.layer_types[:layers]
    shallow = copy.copy(hf)
    shallow._modules = dict(hf._modules)
    shallow.model = shallow_inner
    shallow.config = shallow_inner.config
    return Model(shallow, target.tokenizer, name=f"{target.name}[:{layers} layers]")


@dataclass(frozen=True)
class DraftModel:
    """A smaller `Model` sharing the target's tokenizer, as the draft (`draft=model` makes one)."""

    model: Model

    def start(self, target, spec) -> Drafter:
        return ModelDrafter(self.model, target)


class ModelDrafter(Drafter):
    """Drafts with a model through its own prefix cache: one batched forward per tree level. The
    draft's nodes of the last tree are kept until the next proposal, which reuses the deepest one on
    the accepted text (so accepted drafts are not forwarded by the draft model again)."""

    def __init__(self, draft: Model, target) -> None:
        if draft.vocab_size != target.vocab_size or draft.tokenizer.get_vocab() != target.tokenizer.get_vocab():
            raise ValueError("the draft model must share the target's tokenizer (same vocabulary)")
        self.draft = draft
        self.base: Node | None = None  # the draft's node for the first `len(self.base_tokens)` context tokens
        self.base_tokens: list[int] = []
        self.kids: dict[tuple[int, int], Node] = {}  # (id(parent node), token) -> the last tree's nodes
        self.held: list[Node] = []  # nodes whose cache entries this drafter made and may still need

    def propose(self, context, k, limit, width, state, sample, generator) -> DraftTree:
        tree = DraftTree()
        frontier = [(ROOT, self._node_for(context), state, width)]
        for _ in range(min(k, limit)):
            logits = self.draft.logits([node for _, node, _, _ in frontier])
            if any(s is not None for _, _, s, _ in frontier):
                logits = apply_masks(logits, [s for _, _, s, _ in frontier])
            grown = []
            for (index, node, node_state, count), row in zip(frontier, logits):
                if not torch.isfinite(row).any():
                    continue
                if sample is None:  # the top `count` tokens, each then continued by arg-max
                    picks = row.topk(min(count, int(torch.isfinite(row).sum()))).indices.tolist()
                else:  # `count` independent draws; a token drawn t times roots t sequences
                    q = sample.process(row.unsqueeze(0))[0].softmax(-1)
                    tree.q[index] = q
                    picks = torch.multinomial(q, count, replacement=True, generator=generator).tolist()
                counts: dict[int, int] = {}
                for token in picks:
                    tree.add(index, token)
                    counts[token] = counts.get(token, 0) + 1
                for token, times in counts.items():
                    child = node.child((token,), ())
                    self.kids[(id(node), token)] = child
                    self.held.append(child)
                    child_state = node_state.advance(token) if node_state is not None else None
                    ends = token in self.draft.eos_token_ids or (child_state is not None and child_state.finished)
                    if not ends:
                        grown.append((tree.children(index)[token], child, child_state, times))
            frontier = grown
            if not frontier:
                break
        return tree

    def _node_for(self, context: list[int]) -> Node:
        """The draft's node holding exactly `context`: the deepest node of the last tree on it, plus
        the rest; every other entry this drafter holds is dropped."""
        if self.base is None or context[: len(self.base_tokens)] != self.base_tokens:
            self.close(context)
            self.base, self.base_tokens = Node(tuple(context)), list(context)
            self.held = [self.base]
            return self.base
        node, at = self.base, len(self.base_tokens)
        while at < len(context) and (id(node), context[at]) in self.kids:
            node, at = self.kids[(id(node), context[at])], at + 1
        keep = [node]
        if at < len(context):
            node = node.child(tuple(context[at:]), ())
            keep.append(node)
        for held in self.held:
            if all(held is not k for k in keep):
                self.draft.cache.discard(held)
        self.base, self.base_tokens, self.held, self.kids = node, list(context), keep, {}
        return node

    def close(self, tokens: list[int]) -> None:
        for held in self.held:
            self.draft.cache.discard(held)
        self.held, self.kids, self.base = [], {}, None
