"""Lexically constrained beam search: `LexicalBeam`, dynamic beam allocation (Post and Vilar, "Fast
Lexically Constrained Decoding with Dynamic Beam Allocation for Neural Machine Translation", NAACL 2018,
arXiv 1804.06609), with the look-ahead heuristic of NeuroLogic A*esque decoding (Lu et al., "NeuroLogic
A*esque Decoding: Constrained Text Generation with Lookahead Heuristics", NAACL 2022, arXiv 2112.08726)
as an option. It is `Beam` (its fields, finished pool, stopping rule and ranking: search/beam.py) with
another choice of the next running beams, for an `sd.includes(...)` constraint (grammars/lexical.py).

Per prompt and step, from the W running beams' next-token log-probabilities (forbidden tokens -inf):
1. candidates are the top K = max(2, 1 + #eos) * W over all beams and tokens (as Beam), plus, for each
   beam, its best token, the next token of every way to write each unmet phrase from where it stands
   (continuing a partial match, or starting the phrase), and the first token of its closing walk (the
   token the budget steering would force: every beam keeps a way to finish within `max_tokens`);
2. a candidate that cannot write its unmet phrases and close within the tokens left (its State's
   `closing`) is dropped, so every running beam can still finish with every phrase;
3. the W slots are split into banks by the number of phrases met (0..P): W // (P + 1) each, the rest to
   the top bank; a bank with fewer candidates than slots gives its spare slots to the others, highest
   bank first (Post and Vilar's reallocation, biased to progress as theirs);
4. each bank keeps its best candidates by score — the cumulative log-probability, plus, with
   `lookahead=L`, `lookahead_weight` times the best log-probability the model gives the next token of an
   unmet phrase along a greedy roll-out of L tokens (A*esque's look-ahead; 0 when all are met); the
   look-ahead only ranks, the stored score stays the log-probability;
5. candidates that finish (end-of-sequence, allowed only once every phrase is met) enter Beam's pool
   when they rank within the first W of the top bank; Beam's stopping rule and ranking apply.
Ties break by candidate order (top-K order first, then per beam in beam order). Without phrases (any
other constraint, or none) there is one bank and the step is Beam's candidate set plus each beam's best.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch

from searchdec.grammars.lexical import LexicalState
from searchdec.search.beam import Beam, _accepting, _params, _PromptBeams
from searchdec.search.expand import Expander
from searchdec.search.trace import Trace
from searchdec.search.tree import Node

LOOKAHEAD_FLOOR = -100.0  # the heuristic of a roll-out where no phrase token is allowed at all


@dataclass(frozen=True)
class LexicalBeam(Beam):
    """Beam search with dynamic beam allocation over the phrases of `sd.includes(...)`; `lookahead` > 0
    adds NeuroLogic A*esque's greedy look-ahead to the ranking within a bank."""

    lookahead: int = 0
    lookahead_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.lookahead, bool) or not isinstance(self.lookahead, int) or self.lookahead < 0:
            raise ValueError(f"lookahead must be an int >= 0 (0: off), got {self.lookahead!r}")
        weight = self.lookahead_weight
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not (math.isfinite(weight) and weight >= 0)
        ):
            raise ValueError(f"lookahead_weight must be a finite number >= 0, got {weight!r}")

    def _prompt_beams(self, root: Node, model) -> _BankedBeams:
        return _BankedBeams(root, self, model)


def bank_sizes(width: int, counts: list[int]) -> list[int]:
    """Slots per bank (bank i: i phrases met): an even split, the remainder to the top bank, then the
    slots a bank cannot fill handed to the others, highest bank first."""
    banks = len(counts)
    sizes = [width // banks] * banks
    sizes[-1] += width - sum(sizes)
    spare = sum(max(0, size - count) for size, count in zip(sizes, counts))
    sizes = [min(size, count) for size, count in zip(sizes, counts)]
    for i in reversed(range(banks)):
        extra = min(spare, counts[i] - sizes[i])
        sizes[i] += extra
        spare -= extra
    return sizes


class _BankedBeams(_PromptBeams):
    """One prompt's beams under dynamic beam allocation (Beam's pool, stopping rule and result)."""

    def __init__(self, root: Node, spec: LexicalBeam, model) -> None:
        super().__init__(root, spec, model)
        self.trace = Trace("LexicalBeam", _params(spec), decode=model.decode)
        self.trace.add(root, score=0.0, status="root")
        self.lexical = isinstance(root.state, LexicalState)
        self.banks = len(root.state.met) + 1 if self.lexical else 1

    def advance(self, logprobs: torch.Tensor, step: int, k: int, expander: Expander, spec: LexicalBeam) -> None:
        width, vocab = logprobs.shape
        totals = (logprobs + self.scores.to(logprobs.device)[:, None]).float()
        pairs = dict.fromkeys(
            divmod(i, vocab) for i in torch.topk(totals.reshape(-1), min(k, totals.numel()))[1].tolist()
        )
        pairs.update(dict.fromkeys(enumerate(totals.argmax(dim=-1).tolist())))
        for parent, node in enumerate(self.running):
            pairs.update(dict.fromkeys((parent, token) for token in self._proposed(node, expander)))
        keys = list(pairs)
        rows = torch.tensor([p for p, _ in keys], device=totals.device)
        cols = torch.tensor([t for _, t in keys], device=totals.device)
        values, lps = totals[rows, cols].tolist(), logprobs[rows, cols].tolist()
        length = step + 1
        open_: list[tuple[float, Node]] = []
        finished: list[tuple[float, Node, str]] = []
        for (parent, token), total, lp in zip(keys, values, lps):
            if total == float("-inf"):
                continue
            child = self.running[parent].child((token,), (lp,))
            reason = expander.finish_reason(child, self.root)
            if reason is not None:
                finished.append((total, child, reason))
            elif self._viable(child, expander):
                open_.append((total, child))
        ranks = self._ranks(open_, expander, spec)
        chosen = self._allocate(open_, ranks, spec.width)
        self._finish(finished, open_, length, spec)
        chosen.sort(key=lambda entry: -entry[0])
        for total, node in chosen:
            self.trace.add(node, score=total, status="beam", step=step)
        self.running = [node for _, node in chosen]
        self.scores = torch.tensor([total for total, _ in chosen], dtype=torch.float32)
        self.open = self._still_open(step + 1, spec, expander)
        if not self.open:
            for node in self.running:
                self.trace.add(node, status="pruned")

    def _proposed(self, node: Node, expander: Expander) -> list[int]:
        """A beam's own candidates beyond the top K: each unmet phrase's next tokens, and its closing
        walk's first token (the way the budget steering would take)."""
        state = node.state
        if not isinstance(state, LexicalState):
            return []
        found = state.closing(expander.room(node, self.root))
        return state.next_tokens() + ([found[1]] if found is not None and found[1] is not None else [])

    def _viable(self, child: Node, expander: Expander) -> bool:
        if not self.lexical:
            return True
        return child.state.closing(expander.room(child, self.root)) is not None

    def _bank(self, node: Node) -> int:
        return node.state.met_count if self.lexical else 0

    def _ranks(self, open_: list[tuple[float, Node]], expander: Expander, spec: LexicalBeam) -> list[float]:
        ranks = [total for total, _ in open_]
        if spec.lookahead and spec.lookahead_weight and self.lexical:
            for i, h in self._lookahead([node for _, node in open_], expander, spec.lookahead).items():
                ranks[i] += spec.lookahead_weight * h
        return ranks

    def _lookahead(self, nodes: list[Node], expander: Expander, steps: int) -> dict[int, float]:
        """For each node with an unmet phrase: the best log-probability of a next phrase token over a
        greedy roll-out of `steps` tokens (NeuroLogic A*esque); its nodes' cache entries are dropped."""
        best = {i: LOOKAHEAD_FLOOR for i, node in enumerate(nodes) if not node.state.all_met}
        rolling = [(i, nodes[i]) for i in best]
        made: list[Node] = []
        for _ in range(steps):
            if not rolling:
                break
            batch = [node for _, node in rolling]
            lps = expander.logprobs(batch, [self.stats] * len(batch))
            made += batch
            greedy = lps.argmax(dim=-1).tolist()
            following = []
            for r, (i, node) in enumerate(rolling):
                tokens = node.state.next_tokens()
                if tokens:
                    best[i] = max(best[i], float(lps[r, tokens].max()))
                token = greedy[r]
                if node.state.all_met or lps[r, token] == float("-inf") or token in expander.stopping.eos_token_ids:
                    continue
                following.append((i, node.child((token,), (float(lps[r, token]),))))
            rolling = following
        expander.discard(made)
        return best

    def _allocate(self, open_: list[tuple[float, Node]], ranks: list[float], width: int) -> list[tuple[float, Node]]:
        by_bank: list[list[int]] = [[] for _ in range(self.banks)]
        for i, (_, node) in enumerate(open_):
            by_bank[self._bank(node)].append(i)
        sizes = bank_sizes(width, [len(members) for members in by_bank])
        chosen = []
        for members, size in zip(by_bank, sizes):
            members.sort(key=lambda i: -ranks[i])  # stable: candidate order breaks ties
            chosen += [open_[i] for i in members[:size]]
        return chosen

    def _finish(
        self, finished: list[tuple[float, Node, str]], open_: list[tuple[float, Node]], length: int, spec: LexicalBeam
    ) -> None:
        """Finished candidates that rank within the first W of the top bank enter the pool (Beam's rule,
        among the hypotheses that can still count: the running ones of the top bank and the complete
        ones); one that is not complete (cut by length with a phrase unmet) is kept apart as cut."""
        top = self.banks - 1
        complete = [(total, child) for total, child, reason in finished if self._complete(child, reason)]
        rivals = sorted([total for total, node in open_ if self._bank(node) == top] + [t for t, _ in complete])
        for total, child, reason in finished:
            child.finish_reason = reason
            score = total / (length**spec.length_penalty)
            self.trace.add(child, score=score, status="finished")
            if not self._complete(child, reason):
                self.cut.append((score, child))
            elif len(rivals) - bisect.bisect_right(rivals, total) < spec.width:
                self.pool.append((score, child))
        self.pool.sort(key=lambda entry: -entry[0])
        del self.pool[spec.pool_size :]

    def _complete(self, node: Node, reason: str) -> bool:
        return not self.constrained or (reason == "stop" and _accepting(node))
