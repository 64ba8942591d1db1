"""Speculative decoding: cheap drafts propose tokens, the target checks them all in one forward.

Reference: Leviathan, Kalman & Matias, "Fast Inference from Transformers via Speculative Decoding"
(ICML 2023, arXiv 2211.17192); Chen et al., "Accelerating Large Language Model Decoding with
Speculative Sampling" (arXiv 2302.01318). Multi-draft verification as a token tree: SpecInfer (Miao
et al., arXiv 2305.09781), SpecTr (Sun et al., arXiv 2310.15141), recursive rejection sampling as in
"Towards Optimal Multi-draft Speculative Decoding" (Hu et al., arXiv 2502.18779) and Jeon et al.
(arXiv 2402.14160). Semantics, per step:
- a draft source (search/drafts.py) proposes a tree of tokens after the accepted text: one chain of
  up to k tokens, or with `drafts=w` up to w drafts merged as a trie (k capped so the step cannot
  pass max_tokens); under a constraint each draft token is allowed by the grammar state after the
  ones above it, and tokens the grammar forces are drafted for free before it;
- the target forwards the pending tokens and the whole tree at once (`Model.logits_last` for a
  chain; `Model.logits_tree` with a tree attention mask otherwise, through the prefix cache), giving
  its distribution p_v after every tree node v;
- from the root, while the current node has children: greedy follows the child equal to the target's
  arg-max (masked like plain greedy decoding), so the output is token-identical to the target's greedy
  output; sampling runs recursive rejection over the node's draws x_1..x_m (in draw order, repeats
  kept): x_i is accepted with probability min(1, p(x_i) / q(x_i)), else p becomes norm(max(0, p - q))
  and x_{i+1} is tried; when all are rejected a token is drawn from what is left of p. q is the draft
  distribution the draws came from independently, or a point mass for deterministic drafts (lookups,
  arg-max drafts: then p loses the rejected token and the rule is plain sampling from p). Each
  accepted token is distributed exactly as target sampling (p includes the Sample warpers and the
  grammar mask); with one draft this is the single-draft rule of Leviathan et al.;
- the node reached gives one more token from its own p (the bonus token, or the correction above);
- the accepted path keeps its KV entry (the verifying forward's entry, cut or, for a tree, the path's
  positions moved together: `PrefixCache.put_branch`); the rest is dropped.

Budget-aware steering (search/budget.py) is not applied here: a constrained hypothesis that
`max_tokens` cuts ends with "length", as without steering.

Each prompt's `Generation.stats` (a `SpeculativeStats`) reports target calls, tokens per target call,
drafted tokens (tree nodes) and accepted ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from searchdec.grammars.base import apply_masks
from searchdec.models.model import Model
from searchdec.search.base import Search, SearchResult, SearchStats
from searchdec.search.drafts import (
    ROOT,
    Drafter,
    DraftModel,
    DraftTree,
    PromptLookup,
    SelfSpeculative,  # noqa: F401 (re-exported: speculative.SelfSpeculative)
    SuffixDraft,
    early_exit_model,  # noqa: F401 (re-exported: contrastive.py takes its amateur from here)
)
from searchdec.search.rows import Stopping, StopText, finish_reason
from searchdec.search.sampling import Sample
from searchdec.search.tree import Node
from searchdec.search.work import Work


@dataclass
class SpeculativeStats(SearchStats):
    """A speculative run's cost (on `Generation.stats`): target and draft forwards, drafted and
    accepted tokens, tokens generated."""

    target_calls: int = 0
    draft_calls: int = 0
    drafted: int = 0
    accepted: int = 0
    generated: int = 0

    @property
    def tokens_per_target_call(self) -> float:
        return self.generated / self.target_calls if self.target_calls else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def target_calls_avoided(self) -> int:
        """Target forwards saved against one forward per generated token."""
        return self.generated - self.target_calls


# --- the sampling rule ------------------------------------------------------------------------


def accept_or_resample(p: torch.Tensor, q: torch.Tensor | None, token: int, generator) -> int | None:
    """The speculative sampling rule for one drafted `token` drawn from `q` (None: a point mass):
    None when it is accepted (probability min(1, p/q)), else a token drawn from norm(max(0, p - q)).
    Whatever q is, the token that results is distributed as p (Leviathan et al., Theorem 1)."""
    accepted, token = recursive_rejection(p, q, [token], generator)
    return None if accepted is not None else token


def recursive_rejection(p: torch.Tensor, q: torch.Tensor | None, draws: list[int], generator) -> tuple[int | None, int]:
    """Recursive rejection sampling over `draws`, drawn independently from `q` (None: deterministic
    drafts, each a point mass): (i, draws[i]) for the first draft accepted, draft i with probability
    min(1, p_i(x_i) / q(x_i)) where p_i is p after the rejections before it (p_{i+1} =
    norm(max(0, p_i - q))); (None, token drawn from the last p_i) when all are rejected. The token
    returned is distributed as p whatever q is (SpecTr, arXiv 2310.15141; Hu et al., arXiv 2502.18779)."""
    for i, token in enumerate(draws):
        q_token = 1.0 if q is None else float(q[token])
        if float(torch.rand((), generator=generator)) * q_token < float(p[token]):
            return i, token
        if q is None:
            residual = p.clone()
            residual[token] = 0.0
        else:
            residual = (p - q).clamp_min(0.0)
        if float(residual.sum()) <= 0.0:  # p <= q everywhere means p == q: rejection cannot happen
            residual = p
        p = residual / residual.sum()
    return None, int(torch.multinomial(p, 1, generator=generator))


# --- the algorithm -----------------------------------------------------------------------------


SCHEDULES = ("constant", "heuristic")


@dataclass(frozen=True)
class Speculative(Search):
    """`sd.Speculative(draft=..., k=4, drafts=1, sample=None)`: `draft` is "prompt_lookup" (default),
    "suffix" (a `SuffixDraft()` of this spec's own), a `PromptLookup(...)` or `SuffixDraft(...)`, an
    `sd.Model` sharing the tokenizer, `SelfSpeculative(layers)`, or any source whose `start(target,
    spec)` gives a `drafts.Drafter`; `drafts=w` verifies up to w drafts at once as a token tree (one
    target forward with a tree attention mask); `sample=sd.Sample(...)` samples (losslessly), None
    decodes greedily. `schedule="heuristic"` adapts the draft length per prompt as transformers'
    assisted generation does: +2 after a step whose drafts were all accepted, -1 (not below 1)
    otherwise, capped at `max_k`; "constant" keeps `k`. Either way the output is the same; only the
    speed changes."""

    draft: object = "prompt_lookup"
    k: int = 4
    sample: Sample | None = None
    n: int = 1
    schedule: str = "constant"
    max_k: int = 16
    drafts: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if isinstance(self.drafts, bool) or not isinstance(self.drafts, int) or self.drafts < 1:
            raise ValueError(f"drafts must be an integer >= 1, got {self.drafts!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f'schedule must be "constant" or "heuristic", got {self.schedule!r}')
        if self.max_k < self.k:
            raise ValueError(f"max_k ({self.max_k}) must be >= k ({self.k})")
        if self.sample is not None and not isinstance(self.sample, Sample):
            raise TypeError("sample must be sd.Sample(...) or None (greedy)")
        if self.sample is not None and self.sample.n != 1:
            raise ValueError("Speculative decodes one hypothesis per prompt (sample.n must be 1)")
        if self.sample is not None and self.sample.penalizes:
            raise ValueError(
                "Speculative does not apply the history penalties (repetition_penalty, no_repeat_ngram_size, "
                "presence_penalty, frequency_penalty, logit_bias) to its drafts; decode with sd.Sample(...) instead"
            )
        object.__setattr__(self, "source", _source(self.draft))

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        model, stopping = work.model, work.stopping
        generator = self.sample.generator(model.device) if self.sample is not None else None
        texts = StopText(model, stopping.stop)
        results = []
        for root in roots:
            stats = SpeculativeStats()
            leaf = self._one(model, root, stopping, generator, texts, stats)
            stats.generated_tokens = leaf.depth
            results.append(SearchResult([leaf], [None], None, stats))
        return results

    def _one(self, model, root: Node, stopping: Stopping, generator, texts, stats: SpeculativeStats) -> Node:
        drafter: Drafter = self.source.start(model, self)
        prompt_length = len(root.new_tokens)
        if stopping.max_tokens == 0:
            leaf = root.child((), ())
            leaf.finish_reason = "length"
            return leaf
        logits = model.logits([root])[0]
        stats.target_calls += 1
        token = self._pick(logits, root.state, generator)
        node = root.child((token,), (float(logits.log_softmax(-1)[token]),))
        stats.generated += 1
        k = self.k
        while True:
            reason = finish_reason(node, stopping, prompt_length, texts)
            if reason is not None:
                node.finish_reason = reason
                for done in (root, *node.path()):  # every entry this prompt's verification made
                    model.cache.discard(done)
                drafter.close(list(root.new_tokens) + node.generated()[0])
                return node
            room = stopping.max_tokens - node.depth - 1
            if stopping.context_window is not None:
                room = min(room, stopping.context_window - prompt_length - node.depth - 1)
            tree, proposed, tip = DraftTree(), None, ROOT
            forced: list[int] = []
            if room > 0:
                # Tokens the grammar forces are drafted for free; the drafts hang after them.
                forced = node.state.forced[:room] if node.state is not None else []
                tip = tree.add_path(ROOT, forced)
                state = node.state.advance_many(forced) if forced else node.state
                if room > len(forced) and not (state is not None and state.finished):
                    context = list(root.new_tokens) + node.generated()[0] + forced
                    limit = room - len(forced)
                    proposed = drafter.propose(context, k, limit, self.drafts, state, self.sample, generator)
                    tree.graft(proposed, tip)
                    stats.draft_calls += 1
            before = stats.accepted
            node, rows = self._verify(model, node, tree, generator, stats)
            if proposed is not None:  # the target's logits after the proposal's root and each of its nodes
                drafter.observe(proposed, torch.cat([rows[tip + 1 : tip + 2], rows[len(forced) + 1 :]]))
            if self.schedule == "heuristic" and len(tree) > len(forced):
                all_taken = stats.accepted - before == tree.depth()
                k = min(k + 2, self.max_k) if all_taken else max(k - 1, 1)

    def _verify(self, model, node: Node, tree: DraftTree, generator, stats) -> tuple[Node, torch.Tensor]:
        """One target forward over `tree` after `node`: the node holding what it accepted, and the
        logits after `node` and after each tree node."""
        stats.drafted += len(tree)
        # a cache key only: its tokens are a tree in flat order, no sequence a grammar state could follow
        verify = Node(tuple(tree.tokens), node) if len(tree) else None
        if verify is None:
            rows = model.logits([node])
        elif tree.is_chain:
            rows = model.logits_last([verify], len(tree) + 1)[0]
        else:
            rows = model.logits_tree(verify, tree.parents)
        stats.target_calls += 1
        raw = rows.log_softmax(-1)
        state = node.state
        at, path, extra = ROOT, [], None
        while True:
            p = self._distribution(rows[at + 1], state)
            kids = tree.children(at)
            if self.sample is None:
                token = int(p.argmax())
                chosen = kids.get(token)
            elif kids:
                index, token = recursive_rejection(p, tree.q.get(at), tree.draws[at], generator)
                chosen = None if index is None else kids[token]
            else:
                token, chosen = int(torch.multinomial(p, 1, generator=generator)), None
            if chosen is None:
                extra = token
                break
            path.append(chosen)
            at = chosen
            state = state.advance(token) if state is not None else None
            if self._ends(token, state, model):
                break
        accepted = [tree.tokens[i] for i in path]
        stats.accepted += len(accepted)
        rows_of = [ROOT, *path]  # the row before each new token is its parent's
        new = [*accepted, *([] if extra is None else [extra])]
        logprobs = tuple(float(raw[rows_of[i] + 1, t]) for i, t in enumerate(new))
        stats.generated += len(new)
        if verify is None:
            return node.child(tuple(new), logprobs), rows
        entry = model.cache.get(verify)
        if entry is None:
            return node.child(tuple(new), logprobs), rows
        # The verifying forward computed node + the tree: keep node + the accepted path of its entry
        # (before dropping the verify entry: a runtime may free its storage then).
        kept = node.child(tuple(accepted), logprobs[: len(accepted)]) if accepted else node
        model.cache.put_branch(kept, entry, entry.length - len(tree), path)
        model.cache.discard(verify)
        return (kept if extra is None else kept.child((extra,), logprobs[len(accepted) :])), rows

    def _distribution(self, logits: torch.Tensor, state) -> torch.Tensor:
        if state is not None:
            logits = apply_masks(logits.unsqueeze(0), [state])[0]
        if self.sample is None:
            return logits
        return self.sample.process(logits.unsqueeze(0))[0].softmax(-1)

    def _pick(self, logits, state, generator) -> int:
        p = self._distribution(logits, state)
        return int(p.argmax()) if self.sample is None else int(torch.multinomial(p, 1, generator=generator))

    @staticmethod
    def _ends(token, state, model) -> bool:
        return token in model.eos_token_ids or (state is not None and state.finished)


def _source(draft):
    if isinstance(draft, str) and draft in DRAFTS:
        return DRAFTS[draft]()
    if isinstance(draft, Model):
        return DraftModel(draft)
    if callable(getattr(draft, "start", None)) and not isinstance(draft, str):
        return draft
    raise TypeError(
        "draft must be 'prompt_lookup', 'suffix', sd.PromptLookup(...), sd.SuffixDraft(...), "
        f"sd.SelfSpeculative(layers), an sd.Model or a source with start(target, spec), got {draft!r}"
    )


DRAFTS = {"prompt_lookup": PromptLookup, "suffix": SuffixDraft}  # draft= names
