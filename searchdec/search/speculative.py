"""Speculative decoding: a cheap draft proposes k tokens, the target checks them all in one forward.

Reference: Leviathan, Kalman & Matias, "Fast Inference from Transformers via Speculative Decoding"
(ICML 2023, arXiv 2211.17192); Chen et al., "Accelerating Large Language Model Decoding with
Speculative Sampling" (arXiv 2302.01318). Semantics, per step:
- the draft proposes d1..dk after the accepted text (k capped so the step cannot pass max_tokens);
  under a constraint each draft token must be allowed by the grammar state after the ones before it
  (the draft is cut at the first that is not), and tokens the grammar forces are drafted for free;
- the target forwards the pending tokens and d1..dk at once (`Model.logits_last`, through the prefix
  cache), giving its distribution p_i before each d_i and one more after dk;
- greedy: d_i is accepted while it equals the target's arg-max (masked like plain greedy decoding),
  so the output is token-identical to the target's greedy output;
- sampling: d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)), q_i the draft's
  distribution (a point mass for prompt lookup); at the first rejection a token is drawn from
  norm(max(0, p_i - q_i)); when all are accepted a bonus token is drawn from p_{k+1}. The output is
  distributed exactly as target sampling (p includes the Sample warpers and the grammar mask);
- the accepted prefix keeps its KV entry (the verifying forward's entry, truncated), the rejected
  tail is dropped.

Budget-aware steering (search/budget.py) is not applied here: a constrained hypothesis that
`max_tokens` cuts ends with "length", as without steering.

Draft sources: `PromptLookup` (n-gram match in the prompt and output so far, no model; Saxena 2023,
"prompt lookup decoding"), a smaller `Model` sharing the target's tokenizer, and `SelfSpeculative`
(the target's first layers and its own output head as the draft; LayerSkip-style early exit,
Elhoushi et al., arXiv 2404.16710, without its training). Each prompt's `Generation.stats` (a
`SpeculativeStats`) reports target calls, tokens per target call, drafted and accepted tokens.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from searchdec.grammars.base import apply_masks
from searchdec.search.base import Search, SearchResult, SearchStats
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


# --- draft sources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptLookup:
    """Drafts the tokens that followed the most recent earlier occurrence of the text's last n-gram
    (n from `max_ngram` down to `min_ngram`); no model, so q is a point mass."""

    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram}, {self.max_ngram}")

    def start(self, target, spec) -> _LookupDrafter:
        return _LookupDrafter(self)


class _LookupDrafter:
    def __init__(self, source: PromptLookup) -> None:
        self.source = source

    def propose(self, context: list[int], k: int, state, sample, generator):
        for n in range(min(self.source.max_ngram, len(context) - 1), self.source.min_ngram - 1, -1):
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start : start + n] == tail:
                    follow = context[start + n : start + n + k]
                    if follow:
                        return _allowed_prefix(follow, state), None
        return [], None


@dataclass(frozen=True)
class SelfSpeculative:
    """The target's first `layers` decoder layers and its output head, as the draft model."""

    layers: int

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")

    def start(self, target, spec) -> _ModelDrafter:
        return _ModelDrafter(early_exit_model(target, self.layers), target)


def early_exit_model(target, layers: int):
    """An sd.Model running only the first `layers` layers of `target` (weights shared, not copied)."""
    from searchdec.models.model import Model

    hf = target.hf
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


class _ModelDrafter:
    """Drafts with a model: k one-token forwards through its own prefix cache, along a chain of nodes
    that follows the accepted text (a rejected tail is left behind)."""

    def __init__(self, draft, target) -> None:
        if draft.vocab_size != target.vocab_size or draft.tokenizer.get_vocab() != target.tokenizer.get_vocab():
            raise ValueError("the draft model must share the target's tokenizer (same vocabulary)")
        self.draft = draft
        self.chain: list[Node] = []  # chain[i]: the draft's node for the first len(tokens[i]) context tokens
        self.lengths: list[int] = []
        self.tokens: list[int] = []

    def propose(self, context: list[int], k: int, state, sample, generator):
        node = self._node_for(context)
        tokens, qs = [], []
        for _ in range(k):
            logits = self.draft.logits([node])[0]
            if state is not None:
                logits = apply_masks(logits.unsqueeze(0), [state])[0]
                if not torch.isfinite(logits).any():
                    break
            if sample is None:
                token = int(logits.argmax())
                qs = None
            else:
                q = sample.process(logits.unsqueeze(0))[0].softmax(-1)
                token = int(torch.multinomial(q, 1, generator=generator))
                qs.append(q)
            tokens.append(token)
            node = node.child((token,), ())
            self.chain.append(node)
            self.lengths.append(self.lengths[-1] + 1)
            self.tokens.append(token)
            if state is not None:
                state = state.advance(token)
                if state.finished:
                    break
        return tokens, qs

    def _node_for(self, context: list[int]) -> Node:
        """The draft node holding exactly `context`, reusing the longest cached chain prefix."""
        keep = 0
        while keep < len(self.tokens) and keep < len(context) and self.tokens[keep] == context[keep]:
            keep += 1
        # chain nodes cover prefixes of self.tokens; find the deepest whose length <= keep
        while self.lengths and self.lengths[-1] > keep:
            self.draft.cache.discard(self.chain.pop())
            self.lengths.pop()
        if not self.chain:
            node = Node(tuple(context))
            self.chain, self.lengths, self.tokens = [node], [len(context)], list(context)
            return node
        self.tokens = self.tokens[: self.lengths[-1]]
        rest = context[self.lengths[-1] :]
        node = self.chain[-1]
        if rest:
            node = node.child(tuple(rest), ())
            self.chain.append(node)
            self.lengths.append(len(context))
            self.tokens = list(context)
        return node


class _DraftModel:
    def __init__(self, model) -> None:
        self.model = model

    def start(self, target, spec) -> _ModelDrafter:
        return _ModelDrafter(self.model, target)


def accept_or_resample(p: torch.Tensor, q: torch.Tensor | None, token: int, generator) -> int | None:
    """The speculative sampling rule for one drafted `token` drawn from `q` (None: a point mass):
    None when it is accepted (probability min(1, p/q)), else a token drawn from norm(max(0, p - q)).
    Whatever q is, the token that results is distributed as p (Leviathan et al., Theorem 1)."""
    q_token = 1.0 if q is None else float(q[token])
    if float(torch.rand((), generator=generator)) * q_token < float(p[token]):
        return None
    if q is None:
        residual = p.clone()
        residual[token] = 0.0
    else:
        residual = (p - q).clamp_min(0.0)
    if float(residual.sum()) <= 0.0:  # p <= q everywhere means p == q: rejection cannot happen
        residual = p
    return int(torch.multinomial(residual / residual.sum(), 1, generator=generator))


def _point(token: int, vocab_size: int) -> torch.Tensor:
    q = torch.zeros(vocab_size)
    q[token] = 1.0
    return q


def _allowed_prefix(tokens: list[int], state) -> list[int]:
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


# --- the algorithm -----------------------------------------------------------------------------


SCHEDULES = ("constant", "heuristic")


@dataclass(frozen=True)
class Speculative(Search):
    """`sd.Speculative(draft=..., k=4, sample=None)`: `draft` is "prompt_lookup" (default), a
    `PromptLookup(...)`, an `sd.Model` sharing the tokenizer, or `SelfSpeculative(layers)`;
    `sample=sd.Sample(...)` samples (losslessly), None decodes greedily. `schedule="heuristic"`
    adapts the draft length per prompt as transformers' assisted generation does: +2 after a step
    whose drafts were all accepted, -1 (not below 1) otherwise, capped at `max_k`; "constant"
    keeps `k`. Either way the output is the same; only the speed changes."""

    draft: object = "prompt_lookup"
    k: int = 4
    sample: Sample | None = None
    n: int = 1
    schedule: str = "constant"
    max_k: int = 16

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
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
        drafter = self.source.start(model, self)
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
                return node
            room = stopping.max_tokens - node.depth - 1
            if stopping.context_window is not None:
                room = min(room, stopping.context_window - prompt_length - node.depth - 1)
            context = list(root.new_tokens) + node.generated()[0]
            drafts, qs, forced = [], None, []
            if room > 0:
                # Tokens the grammar forces are drafted for free; the draft continues after them.
                forced = node.state.forced[:room] if node.state is not None else []
                state = node.state.advance_many(forced) if forced else node.state
                left = min(k, room - len(forced))
                if left > 0 and not (state is not None and state.finished):
                    drafts, qs = drafter.propose(context + forced, left, state, self.sample, generator)
                    stats.draft_calls += 1
                if forced:
                    qs = None if qs is None else [_point(t, model.vocab_size) for t in forced] + qs
                    drafts = forced + drafts
            before = stats.accepted
            node = self._verify(model, node, drafts, qs, generator, stopping, prompt_length, texts, stats)
            if self.schedule == "heuristic" and len(drafts) > len(forced):
                all_taken = stats.accepted - before == len(drafts)
                k = min(k + 2, self.max_k) if all_taken else max(k - 1, 1)

    def _verify(self, model, node, drafts, qs, generator, stopping, prompt_length, texts, stats) -> Node:
        stats.drafted += len(drafts)
        if drafts:
            verify = node.child(tuple(drafts), ())
            rows = model.logits_last([verify], len(drafts) + 1)[0]
        else:
            verify = None
            rows = model.logits([node])
        stats.target_calls += 1
        raw = rows.log_softmax(-1)
        state = node.state
        accepted: list[int] = []
        extra = None
        for i, token in enumerate(drafts):
            p = self._distribution(rows[i], state)
            if self.sample is None:
                extra = None if int(p.argmax()) == token else int(p.argmax())
            else:
                extra = accept_or_resample(p, None if qs is None else qs[i], token, generator)
            if extra is not None:
                break
            accepted.append(token)
            state = state.advance(token) if state is not None else None
            if self._ends(token, state, model):
                break
        stats.accepted += len(accepted)
        position = len(accepted)
        if extra is None and not (accepted and self._ends(accepted[-1], state, model)):
            p = self._distribution(rows[position], state)
            extra = int(p.argmax()) if self.sample is None else int(torch.multinomial(p, 1, generator=generator))
        new = [*accepted, *([] if extra is None else [extra])]
        logprobs = tuple(float(raw[i, t]) for i, t in enumerate(new))
        if verify is not None:
            entry = model.cache.get(verify)
            model.cache.discard(verify)
        if verify is None or entry is None:
            return self._count(node.child(tuple(new), logprobs), new, stats)
        # The verifying forward computed node + accepted drafts: keep that much of its entry.
        kept = node.child(tuple(accepted), logprobs[: len(accepted)]) if accepted else node
        model.cache.put_cut(kept, entry, entry.length - (len(drafts) - len(accepted)))
        if extra is None:
            return self._count(kept, new, stats)
        return self._count(kept.child((extra,), logprobs[len(accepted) :]), new, stats)

    def _count(self, child: Node, new: list[int], stats: SpeculativeStats) -> Node:
        stats.generated += len(new)
        return child

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
    if draft == "prompt_lookup":
        return PromptLookup()
    if isinstance(draft, (PromptLookup, SelfSpeculative)):
        return draft
    from searchdec.models.model import Model

    if isinstance(draft, Model):
        return _DraftModel(draft)
    raise TypeError(
        "draft must be 'prompt_lookup', sd.PromptLookup(...), sd.SelfSpeculative(layers) or an sd.Model, "
        f"got {type(draft).__name__}"
    )
