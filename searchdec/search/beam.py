"""Beam search with the exact semantics of `transformers` `generate(num_beams=W)` (its 4.56+/5.x
vectorised implementation, `GenerationMixin._beam_search`), plus the patience factor of Kasai et al.,
"A Call for Clarity in Beam Search: How It Works and When It Stops" (arXiv 2204.05424).

Per prompt, W running beams start as the prompt alone with score 0. At each step:
1. every running beam's next-token log-probabilities (`log_softmax` of the raw logits; a constraint
   sets forbidden tokens to -inf) are added to its score, and the top K = max(2, 1 + #eos) * W
   candidates over all beams and tokens are taken (`torch.topk`, so ties break as transformers');
2. a candidate is finished when its token is an end-of-sequence token, the grammar has ended, a stop
   string appears, or it reaches `max_tokens` / the context window;
3. the next running beams are the first W unfinished candidates in score order;
4. finished candidates among the first W of the K enter the finished pool with score
   `logprob / generated_length ** length_penalty` (the length counts the end-of-sequence token);
   the pool keeps its best `round(patience * W)` entries (W in transformers: patience 1.0);
5. the search stops when no running beam is left, when `early_stopping=True` and the pool is full,
   or when the pool is full and the best running beam cannot beat its worst entry: its score
   normalised by its current length (`early_stopping=False`), or by `max_tokens` when
   `early_stopping="never"` and `length_penalty > 0` (the upper bound transformers uses).
`num_return` best pool entries are returned, ranked by that score.

Under a constraint, only a hypothesis the grammar accepts may end with end-of-sequence ("stop"); one
cut by `max_tokens` ("length") is kept apart and returned only when fewer than `num_return` accepting
hypotheses were found. When fewer than W candidates are left unfinished (possible only under a
constraint or stop strings), fewer beams run, where transformers would carry -1e9 placeholders.
Beams under a constraint follow the closing budget sampling has (search/budget.py): a candidate
whose grammar can no longer close within the tokens left (one cut at `max_tokens` included) is
dropped, and a beam that so lost a candidate continues, while slots are free, by its closing walk's
first token (the token the budget steering would force), so constrained beams finish within
`max_tokens` instead of being cut.
Forced grammar tokens go through the model like any other (each beam's score needs their
log-probabilities at every step), so there is no jump-forward here.
All prompts' beams are rows of one batched forward per step; a beam's cache entry is its parent's
(gathered as transformers reorders its cache) plus one token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from searchdec.search import budget
from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int
from searchdec.search.expand import Expander
from searchdec.search.rows import start_budget
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Work

EARLY_STOPPING = (False, True, "never")
MAX_LENGTH_PENALTY = 64.0  # 8192 tokens ** 64 = 2 ** 832, still a float


@dataclass(frozen=True)
class Beam(Search):
    """Beam search of `width` beams (transformers' `num_beams`)."""

    width: int = 4
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return: int = 1
    patience: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int("width", self.width)
        check_positive_int("num_return", self.num_return)
        if self.num_return > self.width:
            raise ValueError(f"num_return ({self.num_return}) must be <= width ({self.width})")
        if not any(self.early_stopping is mode for mode in (True, False)) and self.early_stopping != "never":
            raise ValueError(f'early_stopping must be False, True or "never", got {self.early_stopping!r}')
        if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, (int, float)):
            raise TypeError(f"length_penalty must be a number, got {type(self.length_penalty).__name__}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be finite, got {self.length_penalty}")
        if abs(self.length_penalty) > MAX_LENGTH_PENALTY:
            raise ValueError(f"length_penalty must be within ±{MAX_LENGTH_PENALTY:g}, got {self.length_penalty}")
        object.__setattr__(self, "length_penalty", float(self.length_penalty))  # int ** int would be exact, huge
        if not (isinstance(self.patience, (int, float)) and self.patience > 0 and math.isfinite(self.patience)):
            raise ValueError(f"patience must be a positive number, got {self.patience!r}")

    @property
    def n(self) -> int:
        return self.num_return

    @property
    def pool_size(self) -> int:
        return max(self.num_return, round(self.patience * self.width))

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        model, stopping = work.model, work.stopping
        expander = Expander(model, stopping)
        k = max(2, 1 + len(stopping.eos_token_ids)) * self.width
        for root in roots:
            start_budget(root, stopping)  # what closing the grammar costs (nothing for an unconstrained root)
        beams = [self._prompt_beams(root, model) for root in roots]
        if stopping.max_tokens == 0:
            for b in beams:
                leaf = root_leaf(b.root)
                b.pool.append((0.0, leaf))
            return [b.result(self) for b in beams]
        step = 0
        forwarded: list[Node] = []
        while True:
            live = [b for b in beams if b.open]
            if not live:
                break
            nodes = [node for b in live for node in b.running]
            logprobs = expander.logprobs(nodes, [b.stats for b in live for _ in b.running])
            # The previous step's beams now sit behind their children's entries (or were pruned).
            expander.discard(forwarded)
            forwarded = nodes
            row = 0
            for b in live:
                width = len(b.running)
                b.advance(logprobs[row : row + width], step, k, expander, self)
                row += width
            step += 1
        expander.discard(forwarded)
        return [b.result(self) for b in beams]

    def _prompt_beams(self, root: Node, model) -> _PromptBeams:
        """One prompt's beams; a variant that chooses its candidates otherwise (LexicalBeam) overrides it."""
        return _PromptBeams(root, self, model)


def root_leaf(root: Node) -> Node:
    leaf = root.child((), ())
    leaf.finish_reason = "length"
    return leaf


class _PromptBeams:
    """One prompt's running beams, finished pool and stopping flag."""

    def __init__(self, root: Node, spec: Beam, model) -> None:
        self.root = root
        self.running: list[Node] = [root]
        self.scores = torch.zeros(1, dtype=torch.float32)
        self.pool: list[tuple[float, Node]] = []  # (normalised score, leaf), best first
        self.cut: list[tuple[float, Node]] = []  # constrained hypotheses cut by length
        self.open = True
        self.constrained = root.state is not None
        self.stats = SearchStats()
        self.trace = Trace("Beam", _params(spec), decode=model.decode)
        self.trace.add(root, score=0.0, status="root")

    def advance(self, logprobs: torch.Tensor, step: int, k: int, expander: Expander, spec: Beam) -> None:
        width, vocab = logprobs.shape
        totals = (logprobs + self.scores.to(logprobs.device)[:, None]).reshape(-1)
        values, indices = torch.topk(totals, min(k, totals.numel()))
        values, indices = values.cpu(), indices.cpu()
        parents = (indices // vocab).tolist()
        tokens = (indices % vocab).tolist()
        candidate_lps = logprobs.reshape(-1)[indices.to(logprobs.device)].cpu().tolist()
        length = step + 1
        normalised = (values / (length**spec.length_penalty)).tolist()
        running: list[Node] = []
        running_scores: list[float] = []
        dropped: dict[int, None] = {}  # parents with a candidate the budget dropped, in beam order
        for position, (parent, token, total) in enumerate(zip(parents, tokens, values.tolist())):
            if total == float("-inf"):
                break  # forbidden by the constraint (scores are sorted: the rest are too)
            child = self.running[parent].child((token,), (candidate_lps[position],))
            reason = expander.finish_reason(child, self.root)
            if reason is None:
                if len(running) < spec.width:
                    if not self._closable(child, expander):
                        dropped[parent] = None
                        continue
                    running.append(child)
                    running_scores.append(total)
                    self.trace.add(child, score=total, status="beam", step=step)
                continue
            if position >= spec.width:
                continue  # only the top W candidates may finish (the rest back up the running beams)
            if reason == "length" and not self._closable(child, expander):
                dropped[parent] = None  # cut unclosed at max_tokens: the budget steers this beam to close
                continue
            self._finish(child, reason, normalised[position], step)
        if dropped and len(running) < spec.width:
            self._close_dropped(list(dropped), logprobs, running, running_scores, length, step, expander, spec)
        self.pool.sort(key=lambda entry: -entry[0])
        del self.pool[spec.pool_size :]
        self.running = running
        self.scores = torch.tensor(running_scores, dtype=torch.float32)
        self.open = self._still_open(step + 1, spec, expander)
        if not self.open:
            for node in running:
                self.trace.add(node, status="pruned")

    def _finish(self, child: Node, reason: str, score: float, step: int) -> None:
        child.finish_reason = reason
        self.trace.add(child, score=score, status="finished", step=step)
        if self.constrained and not (reason == "stop" and _accepting(child)):
            self.cut.append((score, child))
        else:
            self.pool.append((score, child))

    def _closable(self, child: Node, expander: Expander) -> bool:
        stopping = expander.stopping
        return budget.closable(child.parent, child, stopping.max_tokens, self.room(stopping), stopping.eos_token_ids)

    def room(self, stopping) -> int | None:
        """What the context window leaves after the prompt (None: no window)."""
        return None if stopping.context_window is None else stopping.context_window - len(self.root.new_tokens)

    def _close_dropped(
        self, parents: list[int], logprobs: torch.Tensor, running: list[Node], running_scores: list[float],
        length: int, step: int, expander: Expander, spec: Beam,
    ) -> None:  # fmt: skip
        """Beams whose candidates the budget dropped continue by their closing walk's first token, in
        beam order, while slots are free; the running beams stay in score order."""
        stopping = expander.stopping
        taken = {(id(node.parent), node.new_tokens[0]) for node in running}
        for parent in parents:
            if len(running) >= spec.width:
                break
            node = self.running[parent]
            found = budget.closing_walk(node, stopping.max_tokens, self.room(stopping))
            if found is None or found[1] is None or (id(node), found[1]) in taken:
                continue
            token = found[1]
            lp = float(logprobs[parent, token])
            child = node.child((token,), (lp,))
            child.closing = found[0] - 1
            total = float(self.scores[parent]) + lp
            reason = expander.finish_reason(child, self.root)
            if reason is not None:
                self._finish(child, reason, total / (length**spec.length_penalty), step)
                continue
            at = next((i for i, s in enumerate(running_scores) if s < total), len(running))
            running.insert(at, child)
            running_scores.insert(at, total)
            self.trace.add(child, score=total, status="beam", step=step)

    def _still_open(self, length: int, spec: Beam, expander: Expander) -> bool:
        if not self.running:
            return False
        full = len(self.pool) >= spec.pool_size
        if not full:
            return True
        if spec.early_stopping is True:
            return False
        best_length = length
        if spec.early_stopping == "never" and spec.length_penalty > 0:
            best_length = expander.stopping.max_tokens
        best_possible = float(self.scores[0] / (best_length**spec.length_penalty))
        return best_possible > self.pool[-1][0]

    def result(self, spec: Beam) -> SearchResult:
        ranked = self.pool[: spec.num_return]
        if len(ranked) < spec.num_return:
            ranked += sorted(self.cut, key=lambda entry: -entry[0])[: spec.num_return - len(ranked)]
        if len(ranked) < spec.num_return:
            lp = spec.length_penalty
            leftovers = [(float(s) / max(n.depth, 1) ** lp, n) for s, n in zip(self.scores, self.running)]
            for _, node in leftovers:
                node.finish_reason = "length"
            ranked += leftovers[: spec.num_return - len(ranked)]
        return SearchResult.ranked(ranked, self.trace, self.stats)


def _accepting(node: Node) -> bool:
    return node.state is None or node.state.accepting or node.state.finished


def _params(spec) -> dict:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}
