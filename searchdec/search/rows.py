"""The one decoding step: every driver of per-token decoding — plain Greedy/Sample decoding, the
executors' tasks, step-level expansion (StepBeam, DVTS, MCTS, A*) and the server's continuous batch —
advances its hypotheses with `advance` and, when it decodes rows to their end, with `decode_rows`.

A `Row` is one hypothesis being decoded: its newest node (not forwarded yet), where it started, how it
chooses (the arg-max, or a `Sample` policy with the row's own generator) and the `Rule` it follows
(stopping, jump-forward, step delimiter). One `advance` call:
1. forwards the rows' nodes in one batch through the prefix cache (rows on the same node share its
   forward; logits a caller already holds for a node are used as they are), filling in the
   log-probabilities of tokens the grammar forced on the step before;
2. masks each row's logits by its node's constraint State (reported log-probabilities stay those of
   the unmasked model);
3. chooses a token per row (arg-max, or a draw from the row's warped distribution with its own
   generator — or its own `Picker`, such as arithmetic sampling's code point: a row's draws depend
   on its generator alone, never on the batch — or, for a `Proposal` policy such as sequential Monte
   Carlo's (search/smc.py), by the policy's own rule from the row's unmasked logits: the step masks
   nothing for its rows and never replaces the token it drew); a policy with logit processors
   (search/processors.py) first penalizes the row's logits by the row's own tokens (prompt and
   generated, forced ones included) — before the mask, which it commutes with — and warps after;
4. appends it, plus the tokens the grammar then forces (jump-forward), steering a constrained row to
   close within the tokens left (search/budget.py);
5. backtracks when the new node's State is `dead` (a check beyond the grammar — grammars/checks.py —
   found the token violates it), or when its State may die and its parent can no longer close within
   the tokens left (search/budget.py's `stranded`: the checks refuse every closing the grammar offers,
   so going on could only end in "length"): the token is masked and the row chooses again at the same
   step (the next best token; a fresh draw from the rest of its distribution for a sampled row; none
   for a stranded child, whose siblings cannot close either), and when nothing is left there it
   resumes from the best alternative kept on its path (best-first by the model's cumulative
   log-probability: a row whose State says `may_die` keeps its `ALTERNATIVES` best other tokens of
   every step). A row spends at most `Rule.backtracks` such choices; past them, or with no
   alternative left, it finishes with "unsatisfied", never as a valid-looking output;
6. finishes the row with "stop" (end-of-sequence, a stop string, a grammar that admits nothing more)
   or "length" (`max_tokens`, the context window), or ends its step (delimiter or `max_step_tokens`);
   a row whose rule sets `step_entropy` ends its step *before* choosing (step 3) when the entropy of
   its next-token distribution — the model's, renormalized over the tokens its constraint allows,
   before any temperature or processor — reaches `step_entropy` nats once the step holds at least
   `min_step_tokens` tokens (an uncertainty spike: CARDS' segment end, search/cards.py);
7. drops the cache entry of a node this step created once its child has been forwarded.
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from searchdec.grammars.base import allocate_bitmask, fill_masks, masked_logits
from searchdec.search import budget
from searchdec.search.tree import Node

if TYPE_CHECKING:
    from searchdec.search.sampling import Greedy, Sample

UNSATISFIED = "unsatisfied"  # the finish reason of a hypothesis a check killed with no alternative left
BACKTRACKS = 256  # choices a row may spend backtracking from dead hypotheses (Rule.backtracks)
ALTERNATIVES = 4  # other tokens kept per step, to backtrack to, on a row whose State may die


@dataclass(frozen=True)
class Stopping:
    """When a hypothesis finishes: `max_tokens` generated tokens, an end-of-sequence token, a stop
    string, or the model's context window."""

    max_tokens: int
    eos_token_ids: frozenset[int]
    stop: tuple[str, ...] = ()
    context_window: int | None = None


@dataclass(frozen=True)
class Rule:
    """How a row is decoded: its stopping rule, whether forced text is appended without a forward
    (`jump_forward`), and, unless it runs `to_end`, where its step ends (`step`: a delimiter pattern,
    None for one-token steps; `max_step_tokens`; `step_entropy`: before a token whose distribution's
    entropy reaches it, once the step holds `min_step_tokens` tokens — see step 6 of the module docstring)."""

    stopping: Stopping
    jump_forward: bool = True
    to_end: bool = True
    step: re.Pattern | None = None
    max_step_tokens: int | None = None
    backtracks: int = BACKTRACKS
    step_entropy: float | None = None
    min_step_tokens: int = 1

    def __post_init__(self) -> None:
        if self.step_entropy is not None and self.min_step_tokens < 1:
            raise ValueError(f"min_step_tokens must be >= 1 with step_entropy, got {self.min_step_tokens}")


class Picker(Protocol):
    """A row's own rule for drawing its token from the processed distribution, in place of a torch
    generator (arithmetic sampling's code point). `retry=True` draws again for the same step from an
    edited distribution (budget steering masked the token drawn first)."""

    def pick(self, probs: torch.Tensor, retry: bool = False) -> int: ...


class Proposal(ABC):
    """A row policy that draws each token under the row's constraint by its own rule, from the row's
    unmasked next-token logits (sequential Monte Carlo's proposals, search/smc.py): the step computes
    no mask for its rows' nodes, and budget steering never replaces what it drew (the proposal's
    importance weight accounts for exactly the token drawn)."""

    @abstractmethod
    def propose(self, logits: torch.Tensor, rows: Sequence[Row]) -> list[int]:
        """One allowed token per row; `logits[k]` are the unmasked logits of `rows[k]`'s node."""


def draw(probs: torch.Tensor, source: torch.Generator | Picker | None, retry: bool = False) -> int:
    """One token from a row of probabilities, by the row's generator or its `Picker`."""
    if source is None or isinstance(source, torch.Generator):
        return int(torch.multinomial(probs, 1, generator=source))
    return source.pick(probs, retry)


@dataclass(eq=False)
class Row:
    """One hypothesis being decoded. `node` is its newest node; after `advance`, `logprobs` holds the
    unmasked next-token log-probabilities its new token was chosen from, and `ended` says whether it
    finished (`node.finish_reason` set) or ended its step."""

    node: Node
    start: Node
    prompt_length: int
    rule: Rule
    policy: Sample | Greedy | Proposal | None = None  # None: the arg-max; a Greedy: the arg-max after its processors
    generator: torch.Generator | Picker | None = None
    stats: object = None  # a SearchStats charged with this row's expansions and forwarded tokens
    owner: int = 0  # the caller's index (its prompt)
    ended: bool = False
    logprobs: torch.Tensor | None = None
    backtracks: int = 0  # choices spent backtracking from dead hypotheses
    alternatives: list = field(default_factory=list)  # heap of (-cumulative logprob, order, parent, token, logprob)


def generator(seed: int | None, device) -> torch.Generator:
    """A generator seeded with `seed` (None: from the system's entropy)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


class Decoder:
    """Advances rows on one model, keeping the texts of stop strings and which nodes it created."""

    def __init__(self, model) -> None:
        self.model = model
        self._texts: dict[tuple[str, ...], StopText] = {}
        self._created: dict[int, Node] = {}  # nodes this decoder appended (their entries are its to drop)
        self.forwarded = 0  # nodes forwarded to choose a token (expansions)
        self._given: dict[int, Node] = {}  # nodes a caller gave that this decoder forwarded (release_all drops them)
        self.backtracks = 0  # choices spent on dead hypotheses, all rows together
        self._order = itertools.count()  # tie-break of kept alternatives: the earlier kept first

    def advance(self, rows: Sequence[Row], known: dict[int, torch.Tensor] | None = None) -> None:
        """Append one token (plus forced ones) to every row; see the module docstring."""
        model = self.model
        index: dict[int, int] = {}
        nodes: list[Node] = []
        for row in rows:
            if id(row.node) not in index:
                index[id(row.node)] = len(nodes)
                nodes.append(row.node)
                if row.stats is not None:
                    row.stats.expansions += 1
                    if not known or id(row.node) not in known:
                        row.stats.tokens_forwarded += pending_tokens(model, row.node)
        fresh = [node for node in nodes if not known or id(node) not in known]
        masking = [False] * len(nodes)  # a node whose rows are all a Proposal's needs no mask
        for row in rows:
            masking[index[id(row.node)]] |= not isinstance(row.policy, Proposal)
        ahead = masks_ahead(nodes, masking, model.vocab_size) if fresh else None
        if fresh:
            logits = forward(model, fresh)
            self.forwarded += len(fresh)
            for node in fresh:
                if id(node) not in self._created:
                    self._given[id(node)] = node
        if known:
            parts, k = [], 0
            for node in nodes:
                if id(node) in known:
                    parts.append(known[id(node)].unsqueeze(0).clone())
                else:
                    parts.append(logits[k : k + 1])
                    k += 1
            logits = torch.cat(parts)
        for node in nodes:  # the parent's entry is no longer needed once its child has its own
            if node.parent is not None and id(node.parent) in self._created:
                self._drop(node.parent)
        logprobs = logits.log_softmax(dim=-1)
        rows_of = [index[id(row.node)] for row in rows]
        masked = constrain(logits, nodes, None if all(masking) else masking, ahead)
        uncertain = _uncertain(rows, rows_of, masked)
        if uncertain:  # their steps end here, before a token: the uncertain choice opens the next step
            for i in uncertain:
                rows[i].logprobs = logprobs[rows_of[i]]
                rows[i].ended = True
            going = [i for i in range(len(rows)) if i not in uncertain]
            rows, rows_of = [rows[i] for i in going], [rows_of[i] for i in going]
        tokens, penalized = self._choose(rows, masked, rows_of, logits)
        for i, (row, r, token) in enumerate(zip(rows, rows_of, tokens)):
            scores = penalized[i] if i in penalized else masked[r]
            if row.node.state is not None and row.node.state.may_die:
                self._keep_alternatives(row, token, logprobs[r], scores)
            child = self._extend(row, token, logprobs[r], scores)
            if _lost(child):
                child = self._backtrack(row, child, logprobs[r], scores, rows)
            child.backtracks = row.backtracks
            self._created[id(child)] = child
            row.node = child
            row.logprobs = logprobs[r]
            reason = finish_reason(child, row.rule.stopping, row.prompt_length, self._stop_text(row.rule.stopping))
            if reason is not None:
                child.finish_reason = reason
                row.ended = True
            elif not row.rule.to_end and self._step_ended(row):
                row.ended = True

    def cut(self, row: Row) -> None:
        """End an unfinished row where it is, as "length" (first-finish search cuts the slower rows)."""
        row.node.finish_reason = "length"
        row.ended = True

    def release(self, ended: Sequence[Row], keep_ends: bool = False) -> None:
        """Done with `ended` rows: forced tokens at their ends get their log-probabilities (one last
        forward), and the entries this decoder made for them are dropped — all but the one under the
        row's end with `keep_ends` (a search that will expand the end later forwards only its tokens)."""
        forced = [row.node for row in ended if row.node.forced]
        if forced:
            forward(self.model, forced)
            for node in forced:
                self._drop(node)
        for row in ended:
            node = row.node
            self._drop(node)
            if not keep_ends and node.parent is not None:
                self._drop(node.parent)

    def keep_only(self, nodes: Sequence[Node]) -> None:
        """Drop every entry this decoder made except those `nodes` still need (their own, and their
        parents', which their next forward reads): for a search that abandons rows between steps
        (sequential Monte Carlo's resampling)."""
        needed = {id(node) for node in nodes} | {id(node.parent) for node in nodes if node.parent is not None}
        for key in [key for key in self._created if key not in needed]:
            self._drop(self._created[key])

    def release_all(self) -> None:
        """Drop every entry this decoder made that is still held (a search that kept ends is done)."""
        for node in [*self._created.values(), *self._given.values()]:
            self.model.cache.discard(node)
        self._created.clear()
        self._given.clear()

    def _drop(self, node: Node) -> None:
        if self._created.pop(id(node), None) is not None:
            self.model.cache.discard(node)

    def _stop_text(self, stopping: Stopping) -> StopText:
        texts = self._texts.get(stopping.stop)
        if texts is None:
            texts = self._texts[stopping.stop] = StopText(self.model, stopping.stop)
        return texts

    def _choose(
        self, rows: Sequence[Row], masked: torch.Tensor, rows_of: list[int], logits: torch.Tensor
    ) -> tuple[list[int], dict[int, torch.Tensor]]:
        """A token per row, and the logits it was chosen from for each row whose policy penalizes
        (processors.py: its penalties over the row's history, then the mask — they commute); a
        `Proposal` draws from the unmasked `logits`."""
        if all(row.policy is None for row in rows):
            best = masked.argmax(dim=-1).tolist()
            return [best[r] for r in rows_of], {}
        chosen: list[int] = [0] * len(rows)
        penalized: dict[int, torch.Tensor] = {}
        groups: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(id(row.policy), []).append(i)
        for members in groups.values():
            policy = rows[members[0]].policy
            if isinstance(policy, Proposal):
                proposed = policy.propose(logits[[rows_of[i] for i in members]], [rows[i] for i in members])
                for i, t in zip(members, proposed):
                    chosen[i] = t
                continue
            picked = masked[[rows_of[i] for i in members]]
            if policy is None:
                for i, t in zip(members, picked.argmax(dim=-1).tolist()):
                    chosen[i] = t
                continue
            if policy.penalizes:
                of_node: dict[int, list[int]] = {}  # rows on one node share its history
                for i in members:
                    if id(rows[i].node) not in of_node:
                        of_node[id(rows[i].node)] = history(rows[i].node)
                histories = [of_node[id(rows[i].node)] for i in members]
                picked = policy.penalize(picked, histories, [rows[i].node.depth for i in members])
                penalized.update((i, picked[k]) for k, i in enumerate(members))
            for i, t in zip(members, policy.pick(picked, [rows[i].generator for i in members])):
                chosen[i] = t
        return chosen, penalized

    def _extend(self, row: Row, token: int, logprobs: torch.Tensor, masked: torch.Tensor) -> Node:
        return extend(
            row.node, token, logprobs, masked, row.policy, row.generator, row.rule.stopping, row.prompt_length,
            row.rule.jump_forward,
        )  # fmt: skip

    def _keep_alternatives(self, row: Row, token: int, logprobs: torch.Tensor, scores: torch.Tensor) -> None:
        """Push the row's best other allowed tokens of this step (by the model's log-probability) to backtrack to."""
        candidates = logprobs.masked_fill(~torch.isfinite(scores), float("-inf"))
        candidates[token] = float("-inf")
        values, tokens = torch.topk(candidates, min(ALTERNATIVES, candidates.numel()))
        base = row.node.logprob
        for value, alternative in zip(values.tolist(), tokens.tolist()):
            if value == float("-inf"):
                break
            heapq.heappush(row.alternatives, (-(base + value), next(self._order), row.node, alternative, value))

    def _backtrack(self, row: Row, child: Node, logprobs: torch.Tensor, scores: torch.Tensor, rows) -> Node:
        """A live replacement for the dead `child` (see step 5 of the module docstring), or the dead
        child itself once the row's backtracking budget or its alternatives run out."""
        node = row.node
        # the caller's row stays as chosen from; no token of a step whose node cannot close can close
        scores = None if child.stranded else scores.clone()
        while _lost(child):
            if row.backtracks >= row.rule.backtracks:
                return child
            row.backtracks += 1
            self.backtracks += 1
            if row.stats is not None:
                row.stats.backtracks += 1
            if scores is not None:
                scores[child.new_tokens[0]] = float("-inf")
                if bool(torch.isfinite(scores).any()):
                    token = choose(row.policy, scores.unsqueeze(0), row.generator)[0]
                    child = self._extend(row, token, logprobs, scores)
                    continue
                scores = None  # nothing left at this step: resume from the best alternative kept
            if not row.alternatives:
                return child
            _, _, parent, token, value = heapq.heappop(row.alternatives)
            stopping = row.rule.stopping
            child = _child(parent, token, value, stopping, row.prompt_length, row.rule.jump_forward)
            room = None if stopping.context_window is None else stopping.context_window - row.prompt_length
            child.stranded = not budget.closable(parent, child, stopping.max_tokens, room, stopping.eos_token_ids)
        if child.parent is not node and not any(other.node is node for other in rows if other is not row):
            self._drop(node)  # the abandoned path's newest entry; its ancestors' went as it grew
        return child

    def _step_ended(self, row: Row) -> bool:
        rule = row.rule
        if rule.step is None:
            return True  # one-token steps
        tokens = tokens_since(row.node, row.start)
        if rule.max_step_tokens is not None and len(tokens) >= rule.max_step_tokens:
            return True
        return rule.step.search(self.model.decode(tokens)) is not None


def _lost(child: Node) -> bool:
    """Whether the decoding step backtracks from `child`: a check killed it, or its parent can no longer
    close within the budget (search/budget.py's `stranded`) under a constraint whose State may die."""
    state = child.state
    return state is not None and (state.dead or (child.stranded and state.may_die))


def _uncertain(rows: Sequence[Row], rows_of: list[int], masked: torch.Tensor) -> set[int]:
    """Indices of the rows whose step ends before this token at an uncertainty spike (`Rule.step_entropy`)."""
    due = [
        i
        for i, row in enumerate(rows)
        if row.rule.step_entropy is not None
        and not row.rule.to_end
        and row.node.depth - row.start.depth >= row.rule.min_step_tokens
    ]
    if not due:
        return set()
    values = entropy(masked[[rows_of[i] for i in due]]).tolist()
    return {i for i, value in zip(due, values) if value >= rows[i].rule.step_entropy}


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of each row's softmax; tokens at -inf count for nothing."""
    return torch.special.entr(logits.float().softmax(dim=-1)).sum(dim=-1)


def decode_rows(
    decoder: Decoder,
    rows: Sequence[Row],
    known: dict[int, torch.Tensor] | None = None,
    on_token: Callable[[Row], None] | None = None,
    first: int | None = None,
    keep_ends: bool = False,
) -> list[Node]:
    """Advance `rows` until each has ended; each row's last node, in row order. With `first`, the rows
    of an owner stop once `first` of them have finished with "stop": the others are cut ("length")."""
    active = list(rows)
    for row in active:
        if row.rule.stopping.max_tokens - row.start.depth <= 0:
            row.node = row.start.child((), ())
            row.node.finish_reason = "length"
            row.ended = True
    active = [row for row in active if not row.ended]
    forced: list[Row] = []  # rows ending in forced tokens: their log-probabilities come from one last forward
    while active:
        decoder.advance(active, known)
        known = None
        if on_token is not None:
            for row in active:
                on_token(row)
        if first is not None:
            _cut_when_done(decoder, rows, active, first)
        ended = [row for row in active if row.ended]
        if ended:
            forced += [row for row in ended if row.node.forced]
            decoder.release([row for row in ended if not row.node.forced], keep_ends)
            active = [row for row in active if not row.ended]
    decoder.release(forced, keep_ends)
    return [row.node for row in rows]


def _cut_when_done(decoder: Decoder, rows: Sequence[Row], active: list[Row], first: int) -> None:
    done: dict[int, int] = {}
    for row in rows:
        if row.ended and row.node.finish_reason == "stop":
            done[row.owner] = done.get(row.owner, 0) + 1
    for row in active:
        if not row.ended and done.get(row.owner, 0) >= first:
            decoder.cut(row)


def start_budget(root: Node, stopping: Stopping) -> None:
    """Measure what closing a constrained start costs, before its first token (search/budget.py)."""
    if root.state is not None:
        room = None if stopping.context_window is None else stopping.context_window - _prompt_length(root)
        budget.start(root, stopping.max_tokens, room)


def _prompt_length(node: Node) -> int:
    while node.parent is not None:
        node = node.parent
    return len(node.new_tokens)


def extend(
    node: Node,
    token: int,
    logprobs: torch.Tensor,
    masked: torch.Tensor,
    policy: Sample | Greedy | Proposal | None,
    generator: torch.Generator | Picker | None,
    stopping: Stopping,
    prompt_length: int,
    jump_forward: bool,
) -> Node:
    """The child of `node` for the chosen `token` (with forced tokens, see `_child`), kept closable
    within the budget under a constraint: `masked` is the row `token` was chosen from, `logprobs` the
    unprocessed log-probabilities reported for whichever token is kept."""
    child = _child(node, token, float(logprobs[token]), stopping, prompt_length, jump_forward)
    if node.state is None or isinstance(policy, Proposal):
        return child
    room = None if stopping.context_window is None else stopping.context_window - prompt_length
    return budget.keep_closable(
        node,
        child,
        masked,
        lambda t: _child(node, t, float(logprobs[t]), stopping, prompt_length, jump_forward),
        lambda row: choose(policy, row.unsqueeze(0), generator, 1)[0],
        stopping.max_tokens,
        room,
        stopping.eos_token_ids,
    )


def _child(node: Node, token: int, logprob: float, stopping: Stopping, prompt_length: int, jump_forward: bool) -> Node:
    """The child of `node` with `token`, plus the tokens its grammar then forces (jump-forward), as
    many as the token budget leaves room for. Forced tokens cost no forward pass of their own."""
    child = node.child((token,), (logprob,))
    if not jump_forward or child.state is None or child.state.finished or token in stopping.eos_token_ids:
        return child
    forced = child.state.forced[: stopping.max_tokens - child.depth]
    if stopping.context_window is not None:
        forced = forced[: stopping.context_window - prompt_length - child.depth]
    if not forced:
        return child
    state = child.state.advance_many(forced)
    return Node((token, *forced), node, (logprob,), state=state, forced=len(forced))


def forward(model, nodes: Sequence[Node]) -> torch.Tensor:
    """Next-token logits of `nodes`; the same forward fills in the log-probabilities of forced tokens."""
    keep = 1 + max(node.forced for node in nodes)
    if keep == 1:
        return model.logits(list(nodes))
    logits = model.logits_last(list(nodes), keep)
    for row, node in enumerate(nodes):
        if node.forced:
            k = node.forced
            targets = torch.tensor(node.new_tokens[-k:], device=logits.device).unsqueeze(-1)
            values = logits[row, -1 - k : -1].log_softmax(dim=-1).gather(-1, targets).squeeze(-1)
            node.fill_forced(values.tolist())
    return logits[:, -1]


def _masked_nodes(nodes: Sequence[Node], only: Sequence[bool] | None) -> list[int]:
    return [i for i, node in enumerate(nodes) if node.state is not None and (only is None or only[i])]


class _MaskPool:
    """One worker thread that fills a step's masks while the model forwards (the masks depend on the
    grammar states alone, and llguidance fills them outside the GIL); a forked process makes its own."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool = None

    def submit(self, job: Callable[[], torch.Tensor]) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="searchdec-masks")
        return self._pool.submit(job)


_MASK_POOL = _MaskPool()
OVERLAP_MASKS = True  # fill a step's masks beside its forward (benchmarks/decode.py measures both)


def masks_ahead(nodes: Sequence[Node], only: Sequence[bool] | None, vocab_size: int) -> Future | None:
    """Start filling the masks `constrain` will apply to `nodes` (None when it masks none, or when
    `OVERLAP_MASKS` is off): a bitmask of one row per masked node, in their order."""
    picked = _masked_nodes(nodes, only)
    if not picked or not OVERLAP_MASKS:
        return None
    states = [nodes[i].state for i in picked]

    def fill() -> torch.Tensor:
        bitmask = allocate_bitmask(len(states), vocab_size)
        fill_masks(states, bitmask)
        return bitmask

    return _MASK_POOL.submit(fill)


def constrain(
    logits: torch.Tensor, nodes: Sequence[Node], only: Sequence[bool] | None = None, ahead: Future | None = None
) -> torch.Tensor:
    """Logits with every token a node's constraint forbids set to -inf (a new tensor when any is
    masked); with `only`, just the nodes it marks True are masked; `ahead` holds their masks when
    `masks_ahead` started them."""
    picked = _masked_nodes(nodes, only)
    if not picked:
        return logits
    bitmask = ahead.result() if ahead is not None else None
    if bitmask is None or bitmask.shape != (len(picked), (logits.shape[-1] + 31) // 32):
        bitmask = allocate_bitmask(len(picked), logits.shape[-1])
        fill_masks([nodes[i].state for i in picked], bitmask)
    if len(picked) == len(nodes):
        return masked_logits(logits, bitmask)
    out = logits.clone()
    out[picked] = masked_logits(logits[picked], bitmask)
    return out


def choose(policy: Sample | Greedy | None, logits: torch.Tensor, generator, samples: int = 1) -> list[int]:
    """`samples` tokens chosen from a one-row batch of (masked) logits (policy None: the arg-max); a
    `Picker` draws again for the step it drew last (budget steering's re-draw)."""
    if policy is None:
        return [int(logits[0].argmax())] * samples
    if generator is not None and not isinstance(generator, torch.Generator):
        probs = policy.process(logits).softmax(dim=-1)[0]
        return [draw(probs, generator, retry=True) for _ in range(samples)]
    return policy.draw(logits, generator, samples)[0].tolist()


def finish_reason(node: Node, stopping: Stopping, prompt_length: int, texts: StopText) -> str | None:
    """ "stop", "length", "unsatisfied" (a dead hypothesis: a check it violates), or None (it can still grow)."""
    if node.state is not None and node.state.dead:
        return UNSATISFIED
    if node.new_tokens and node.new_tokens[-1] in stopping.eos_token_ids:
        return "stop"
    if node.state is not None and node.state.finished:
        return "stop"  # the grammar admits nothing more (end-of-sequence was its only option)
    if stopping.stop and texts.hit(node):
        return "stop"
    if node.depth >= stopping.max_tokens:
        return "length"
    if stopping.context_window is not None and prompt_length + node.depth >= stopping.context_window:
        return "length"
    return None


class StopText:
    """Finds a stop string completed by the newest token: only the last few tokens can hold it (a
    string of c characters spans at most 4c single-byte tokens), so only they are decoded."""

    def __init__(self, model, stop: tuple[str, ...]) -> None:
        self.model = model
        self.stop = stop
        self.window = 4 * max((len(s) for s in stop), default=0) + 2

    def hit(self, node: Node) -> bool:
        text = self.model.decode(node.last_tokens(self.window + len(node.new_tokens)))
        return any(s in text for s in self.stop)


def history(node: Node) -> list[int]:
    """Every token from the root (the prompt) to `node`, forced ones included: the `input_ids` a
    transformers logits processor sees; the last `node.depth` of them were generated."""
    parts: list[tuple[int, ...]] = []
    current: Node | None = node
    while current is not None:
        parts.append(current.new_tokens)
        current = current.parent
    return [token for part in reversed(parts) for token in part]


def tokens_since(node: Node, start: Node) -> list[int]:
    """The tokens from just after `start` to `node`."""
    tokens: list[int] = []
    current = node
    while current is not None and current is not start:
        tokens[:0] = current.new_tokens
        current = current.parent
    return tokens


def pending_tokens(model, node: Node) -> int:
    """Tokens a forward of `node` would feed: those after its nearest cached ancestor (at least one)."""
    count = 0
    current = node
    while current is not None and current not in model.cache:
        count += len(current.new_tokens)
        current = current.parent
    return max(count, 1)
