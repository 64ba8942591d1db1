"""Diverse beam search: Vijayakumar et al., "Diverse Beam Search: Decoding Diverse Solutions from
Neural Sequence Models" (arXiv 1610.02424), with Hamming diversity between groups, with the exact
semantics of transformers 4.56 `generate(num_beams=W, num_beam_groups=G, diversity_penalty=λ)`
(`_group_beam_search` with `BeamSearchScorer`; transformers removed it from its core in 4.57).

The W beams form G groups of S = W / G; each group starts from the prompt. At every step, groups
are processed in order: a group's next-token scores are `log_softmax` of its beams' logits, minus
λ times the number of times each token was chosen at this step by the earlier groups (a finished
group counts as choosing the pad token S times), plus each beam's running score; the top
K = max(2, 1 + #eos) * S candidates over the group's beams are walked in score order: an
end-of-sequence candidate within the first S enters the group's finished pool (score / generated
length ** length_penalty, the length counting the end-of-sequence token), others are dropped if
they are end-of-sequence tokens ranked S or worse, and the first S other candidates are the group's
next beams. A group is done once its pool holds S hypotheses and (early_stopping=True) or its best
candidate score, normalised by the current length (False) or by max_tokens ("never" with
length_penalty > 0), cannot beat the pool's worst. The search stops when every group is done or at
max_tokens; groups still running then add their beams to their pools. The `num_return` best of all
pools are returned (scores include the diversity penalties, as in transformers; ties: the later
group wins). Under a constraint, forbidden tokens get -inf and a group may run with fewer beams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int
from searchdec.search.beam import EARLY_STOPPING, MAX_LENGTH_PENALTY, root_leaf
from searchdec.search.expand import Expander
from searchdec.search.rows import Stopping
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Work


@dataclass(frozen=True)
class DiverseBeam(Search):
    """Group beam search with Hamming diversity (`width` beams in `groups` groups)."""

    width: int = 4
    groups: int = 2
    diversity_penalty: float = 0.5
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return: int = 1

    def __post_init__(self) -> None:
        check_positive_int("width", self.width)
        check_positive_int("groups", self.groups)
        check_positive_int("num_return", self.num_return)
        if self.width % self.groups:
            raise ValueError(f"groups ({self.groups}) must divide width ({self.width})")
        if self.num_return > self.width:
            raise ValueError(f"num_return ({self.num_return}) must be <= width ({self.width})")
        if not (isinstance(self.diversity_penalty, (int, float)) and self.diversity_penalty >= 0):
            raise ValueError(f"diversity_penalty must be a number >= 0, got {self.diversity_penalty!r}")
        if not any(self.early_stopping is mode for mode in EARLY_STOPPING[:2]) and self.early_stopping != "never":
            raise ValueError(f'early_stopping must be False, True or "never", got {self.early_stopping!r}')
        if not (isinstance(self.length_penalty, (int, float)) and math.isfinite(self.length_penalty)):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if abs(self.length_penalty) > MAX_LENGTH_PENALTY:
            raise ValueError(f"length_penalty must be within ±{MAX_LENGTH_PENALTY:g}, got {self.length_penalty}")
        object.__setattr__(self, "length_penalty", float(self.length_penalty))  # int ** int would be exact, huge

    @property
    def n(self) -> int:
        return self.num_return

    @property
    def group_size(self) -> int:
        return self.width // self.groups

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        model, stopping = work.model, work.stopping
        expander = Expander(model, stopping)
        pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
        k = max(2, 1 + len(stopping.eos_token_ids)) * self.group_size
        searches = [_Groups(root, self, model) for root in roots]
        if stopping.max_tokens == 0:
            return [s.result(force=[root_leaf(s.root)]) for s in searches]
        step = 0
        forwarded: list[Node] = []
        while True:
            live = [s for s in searches if s.open]
            if not live:
                break
            # One forward for every running beam of every group of every prompt.
            rows: list[tuple[_Groups, int, int]] = []
            nodes: list[Node] = []
            for s in live:
                for g, group in enumerate(s.groups):
                    if not group.done:
                        rows.append((s, g, len(nodes)))
                        nodes.extend(group.beams)
            logprobs = expander.logprobs(nodes, [s.stats for s, g, _ in rows for _ in s.groups[g].beams])
            expander.discard(forwarded)
            forwarded = nodes
            starts = {(id(s), g): start for s, g, start in rows}
            for s in live:
                s.step(logprobs, starts, step, k, pad, expander)
                at_end = step + 1 >= min(stopping.max_tokens, _window(stopping, s.root))
                s.open = not at_end and not all(group.done for group in s.groups)
            step += 1
        expander.discard(forwarded)
        return [s.result() for s in searches]


def _window(stopping: Stopping, root: Node) -> int:
    """Tokens the context window leaves for generation."""
    if stopping.context_window is None:
        return stopping.max_tokens
    return stopping.context_window - len(root.new_tokens)


@dataclass
class _Group:
    beams: list[Node]
    scores: torch.Tensor
    pool: list[tuple[float, Node]]
    done: bool = False


class _Groups:
    def __init__(self, root: Node, spec: DiverseBeam, model) -> None:
        self.root = root
        self.spec = spec
        self.vocab = model.vocab_size
        self.groups = [_Group([root], torch.zeros(1), []) for _ in range(spec.groups)]
        self.open = True
        self.stats = SearchStats()
        params = {name: getattr(spec, name) for name in spec.__dataclass_fields__}
        self.trace = Trace("DiverseBeam", params, model.decode)
        self.trace.add(root, score=0.0, status="root")

    def step(self, logprobs: torch.Tensor, starts: dict, step: int, k: int, pad: int, expander: Expander) -> None:
        spec = self.spec
        size = spec.group_size
        chosen = torch.zeros(self.vocab, dtype=torch.float32, device=logprobs.device)
        length = step + 1
        for g, group in enumerate(self.groups):
            if group.done:
                chosen[pad] += size  # transformers feeds a finished group's rows pad tokens
                continue
            start = starts[(id(self), g)]
            rows = logprobs[start : start + len(group.beams)]
            if g > 0 and spec.diversity_penalty:
                rows = rows - spec.diversity_penalty * chosen
            totals = (rows + group.scores.to(rows.device)[:, None]).reshape(-1)
            values, indices = torch.topk(totals, min(k, totals.numel()))
            values_list = values.tolist()
            parents = (indices // self.vocab).tolist()
            tokens = (indices % self.vocab).tolist()
            model_lps = logprobs[start : start + len(group.beams)].reshape(-1)[indices].tolist()
            beams, scores = [], []
            for rank, (parent, token, total) in enumerate(zip(parents, tokens, values_list)):
                if total == float("-inf"):
                    break
                child = group.beams[parent].child((token,), (model_lps[rank],))
                if expander.finish_reason(child, self.root) == "stop":
                    if rank >= size:
                        continue
                    child.finish_reason = "stop"
                    accepting = child.state is None or child.state.accepting or child.state.finished
                    if accepting:
                        self._add(group, total / length**spec.length_penalty, child, g)
                    continue
                beams.append(child)
                scores.append(total)
                self.trace.add(child, score=total, status="beam", group=g)
                chosen[token] += 1
                if len(beams) == size:
                    break
            group.beams = beams
            group.scores = torch.tensor(scores, dtype=torch.float32)
            if not beams:
                group.done = True
            elif not group.done:
                group.done = self._is_done(group, values_list[0], length, expander.stopping.max_tokens)

    def _add(self, group: _Group, score: float, node: Node, g: int) -> None:
        """transformers' BeamHypotheses.add: keep the best S, the earliest of equal worst ones leaving."""
        self.trace.add(node, score=score, status="finished", group=g)
        size = self.spec.group_size
        worst = min((s for s, _ in group.pool), default=1e9)
        if len(group.pool) < size or score > worst:
            group.pool.append((score, node))
            if len(group.pool) > size:
                drop = min(range(len(group.pool)), key=lambda i: (group.pool[i][0], i))
                del group.pool[drop]

    def _is_done(self, group: _Group, best: float, length: int, max_tokens: int) -> bool:
        spec = self.spec
        if len(group.pool) < spec.group_size:
            return False
        if spec.early_stopping is True:
            return True
        bound_length = length
        if spec.early_stopping == "never" and spec.length_penalty > 0:
            bound_length = max_tokens
        worst = min(s for s, _ in group.pool)
        return worst >= best / bound_length**spec.length_penalty

    def result(self, force: list[Node] | None = None) -> SearchResult:
        if force is not None:
            ranked = [(0.0, force[0])]
        else:
            candidates: list[tuple[float, Node]] = []
            for g, group in enumerate(self.groups):
                if not group.done:
                    for score, beam in zip(group.scores.tolist(), group.beams):
                        beam.finish_reason = beam.finish_reason or "length"
                        self._add(group, score / max(beam.depth, 1) ** self.spec.length_penalty, beam, g)
                candidates += group.pool
            # Python's sort is stable and transformers pops from the end: among equal scores the later wins.
            ordered = sorted(candidates, key=lambda entry: entry[0])
            ranked = ordered[::-1][: self.spec.num_return]
        return SearchResult.ranked(ranked, self.trace, self.stats)
