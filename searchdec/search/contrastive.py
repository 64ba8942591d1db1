"""Contrastive decoding: decode from the difference between an expert and a weaker amateur model.

References: Li et al., "Contrastive Decoding: Open-ended Text Generation as Optimization" (ACL 2023,
arXiv 2210.15097); O'Brien & Lewis, "Contrastive Decoding Improves Reasoning in Large Language
Models" (arXiv 2309.09117). With p_e / p_a the expert's / amateur's next-token distributions and
l_e / l_a their logits, a token x's score is, on the plausible set
V_head = {x : p_e(x) >= alpha * max_w p_e(w)}:
- `beta=None` (Li et al.'s CD score): log p_e(x) - log p_a(x);
- `beta=b` (O'Brien & Lewis's form): (1 + b) * l_e(x) - b * l_a(x) (b = 0.5 in that paper).
Li et al. give tokens outside V_head -inf. Here they get a finite floor, (least plausible score in
their row) - 1000 + log p_e(x): exp of it underflows to exactly 0 in float32, so greedy choice,
sampling and every log-probability of a plausible token are those of the -inf rule; but when a grammar
mask (applied after the contrast, as to any model's logits) forbids every plausible token, the allowed
ones remain, ranked by the expert, instead of leaving nothing to choose.

How it fits the engine: contrastive scoring is a logits source. `ContrastiveRuntime` implements the
model-runtime contract (models/base.py) over an (expert, amateur) pair — each forwards the same nodes
through its own prefix cache, and `logits` returns the scores above — and `Contrastive.run` runs an
inner search (greedy by default) on a `Work` over that runtime. Every search, sampling warper and
constraint therefore works on the contrasted scores unchanged; the log-probabilities a hypothesis
reports are `log_softmax` of the scores (the distribution it was decoded from), not the expert's.

The amateur is an `sd.Model` with the expert's tokenizer (same vocabulary, checked before any forward),
or the expert's own first layers, `EarlyExit(k)` (or the plain int `k`): the hidden state after decoder
layer k, through the final norm and the LM head (weights shared, its own KV cache).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from searchdec.models.base import Runtime, TokenNode
from searchdec.search.base import Search, SearchResult, check_positive_int
from searchdec.search.reward_guided import RewardGuidedSpeculative
from searchdec.search.sampling import Greedy
from searchdec.search.speculative import Speculative, early_exit_model
from searchdec.search.tree import Node
from searchdec.search.work import Work

IMPLAUSIBLE_GAP = 1000.0  # how far below a row's least plausible score the implausible tokens start
# Beyond it (1 + beta) * logits may overflow float32; as beta grows, the ranking tends to l_e - l_a, Li et al.'s.
MAX_BETA = 1e6


def contrast(expert: torch.Tensor, amateur: torch.Tensor, alpha: float, beta: float | None) -> torch.Tensor:
    """Contrastive scores [..., vocab] from expert and amateur logits of the same shape (module docstring)."""
    expert_lp = expert.float().log_softmax(dim=-1)
    amateur = amateur.float()
    plausible = expert_lp >= expert_lp.max(dim=-1, keepdim=True).values + math.log(alpha)
    if beta is None:
        scores = expert_lp - amateur.log_softmax(dim=-1)
    else:
        scores = (1 + beta) * expert.float() - beta * amateur
    lowest = scores.masked_fill(~plausible, float("inf")).min(dim=-1, keepdim=True).values
    return torch.where(plausible, scores, lowest - IMPLAUSIBLE_GAP + expert_lp)


@dataclass(frozen=True)
class EarlyExit:
    """The expert's own first `layers` decoder layers, its final norm and its LM head, as the amateur."""

    layers: int

    def __post_init__(self) -> None:
        check_positive_int("EarlyExit layers", self.layers)


class _PairCache:
    """The two prefix caches seen as one: a node is cached when both hold it; discarding drops both."""

    def __init__(self, expert, amateur) -> None:
        self.expert, self.amateur = expert, amateur

    def discard(self, node) -> None:
        self.expert.discard(node)
        self.amateur.discard(node)

    def __contains__(self, node) -> bool:
        return node in self.expert and node in self.amateur

    def __len__(self) -> int:
        return len(self.expert)


class ContrastiveRuntime(Runtime):
    """The runtime contract over an (expert, amateur) pair whose logits are contrastive scores. Text,
    tokenizer and facts are the expert's; `stats` counts the expert's forwards (the amateur's are on
    `amateur.stats`)."""

    def __init__(self, expert, amateur, alpha: float, beta: float | None) -> None:
        self.expert, self.amateur = expert, amateur
        self.alpha, self.beta = alpha, beta
        self.cache = _PairCache(expert.cache, amateur.cache)
        self.stats = expert.stats
        self.tokenizer = expert.tokenizer
        self.name = f"contrastive({expert.name} vs {amateur.name})"
        self._amateur_nodes: dict[int, TokenNode] = {}

    def logits(self, nodes: Sequence[TokenNode]) -> torch.Tensor:
        return self.logits_last(nodes, 1)[:, 0]

    def logits_last(self, nodes: Sequence[TokenNode], keep: int) -> torch.Tensor:
        expert = self.expert.logits_last(nodes, keep)
        amateur = self.amateur.logits_last(nodes, keep).to(expert.device)
        for node in nodes:
            self._amateur_nodes[id(node)] = node
        return contrast(expert, amateur, self.alpha, self.beta)

    def release(self) -> None:
        """Drop every amateur cache entry this runtime made (the searches drop the expert's)."""
        for node in self._amateur_nodes.values():
            self.amateur.cache.discard(node)
        self._amateur_nodes.clear()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.expert.encode(text, add_special_tokens)

    def decode(self, tokens: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.expert.decode(tokens, skip_special_tokens)

    def apply_chat_template(
        self, messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = True
    ) -> list[int]:
        return self.expert.apply_chat_template(messages, tools, add_generation_prompt)

    def check_prompt_length(self, n_tokens: int) -> None:
        self.expert.check_prompt_length(n_tokens)

    @property
    def device(self) -> torch.device:
        return self.expert.device

    @property
    def vocab_size(self) -> int:
        return self.expert.vocab_size

    @property
    def context_window(self) -> int:
        return self.expert.context_window

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.expert.eos_token_ids

    @property
    def vocab_bytes(self) -> list[bytes]:
        return self.expert.vocab_bytes


def amateur_for(expert, amateur) -> Runtime:
    """The amateur runtime `amateur` names for `expert`: a model with the same vocabulary (checked),
    or `EarlyExit(k)` / `k`, the expert's first k layers. Errors name the mismatch."""
    if isinstance(amateur, int) and not isinstance(amateur, bool):
        amateur = EarlyExit(amateur)
    if isinstance(amateur, EarlyExit):
        try:
            return early_exit_model(expert, amateur.layers)
        except ValueError as error:
            raise ValueError(f"Contrastive amateur=EarlyExit({amateur.layers}): {error}") from None
    if amateur.vocab_size != expert.vocab_size:
        raise ValueError(
            f"the amateur's logits have {amateur.vocab_size} entries and the expert's {expert.vocab_size}: "
            "contrastive decoding needs two models with the same tokenizer"
        )
    mine, theirs = expert.tokenizer.get_vocab(), amateur.tokenizer.get_vocab()
    if mine != theirs:
        differing = sorted(set(mine.items()) ^ set(theirs.items()), key=lambda item: item[1])[:3]
        raise ValueError(
            f"the amateur's tokenizer differs from the expert's ({len(theirs)} vs {len(mine)} tokens; e.g. "
            f"{differing}): contrastive decoding needs two models with the same tokenizer"
        )
    return amateur


@dataclass(frozen=True)
class Contrastive(Search):
    """`sd.Contrastive(amateur=..., alpha=0.1, beta=None, search=sd.Greedy())`: `search` (any search
    but the speculative ones) run over the contrastive scores of the module docstring. `amateur` is an
    `sd.Model` sharing the expert's tokenizer, `sd.EarlyExit(k)` or an int k (the expert's first k
    layers); `alpha` in (0, 1] is the plausibility threshold (1: only the expert's arg-max, i.e. the
    expert's greedy output); `beta=None` selects Li et al.'s log-probability difference, a number
    >= 0 O'Brien & Lewis's logit form with that beta (their default: 0.5)."""

    amateur: object
    alpha: float = 0.1
    beta: float | None = None
    search: Search = Greedy()

    def __post_init__(self) -> None:
        if isinstance(self.amateur, int) and not isinstance(self.amateur, bool):
            object.__setattr__(self, "amateur", EarlyExit(self.amateur))
        if not isinstance(self.amateur, (EarlyExit, Runtime)):
            raise TypeError(
                "amateur must be an sd.Model with the expert's tokenizer, sd.EarlyExit(layers) or an int "
                f"(the expert's first layers), got {type(self.amateur).__name__}"
            )
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1] (the plausibility threshold), got {self.alpha!r}")
        if self.beta is not None and (
            isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not 0 <= self.beta <= MAX_BETA
        ):
            raise ValueError(
                f"beta must be a number in [0, {MAX_BETA:g}], or None for Li et al.'s form, got {self.beta!r}"
            )
        if not isinstance(self.search, Search):
            raise TypeError(f"search must be a search spec such as sd.Greedy(), got {type(self.search).__name__}")
        if isinstance(self.search, (Speculative, RewardGuidedSpeculative)):
            raise ValueError(
                f"Contrastive cannot run {type(self.search).__name__}: it verifies drafts against the expert's "
                "own cache entries, which contrastive scores do not have"
            )

    @property
    def n(self) -> int:
        return self.search.n

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        runtime = ContrastiveRuntime(work.model, amateur_for(work.model, self.amateur), self.alpha, self.beta)
        inner = Work(runtime, work.stopping, work.constraint, jump_forward=work.jump_forward, on_token=work.on_token)
        try:
            with inner:
                return self.search.run(inner, roots)
        finally:
            runtime.release()
