"""Logit processors: the penalties and biases that read a hypothesis' tokens, and the truncation
warpers beyond top-k/top-p/min-p, as keyword arguments of both `sd.Greedy(...)` and `sd.Sample(...)`.

One pipeline, applied by the one decoding step (search/rows.py) to every row of every search that
decodes with a `Greedy` or `Sample` policy (plain decoding, BestOfN, FirstFinish, MCTS rollouts,
StepBeam/DVTS, A*, executors' tasks, the server's batch). Per row, in this order:

1. `logit_bias` (token id -> added bias): OpenAI's parameter as vLLM applies it, first
   (vllm/v1/sample/logits_processor/builtin.py `LogitBiasLogitsProcessor.apply`:
   `logits[rows, token_ids] += biases`; vllm/v1/sample/sampler.py `Sampler.forward` runs it before
   `apply_penalties`);
2. `repetition_penalty` (Keskar et al., CTRL, arXiv 1909.05858) over the prompt and the generated
   tokens, exactly transformers' `RepetitionPenaltyLogitsProcessor` (a seen token's logit is divided
   by the penalty when positive, multiplied when negative; vLLM's `apply_repetition_penalties` is the
   same rule over prompt | output tokens);
3. `no_repeat_ngram_size` over the prompt and the generated tokens, exactly transformers'
   `NoRepeatNGramLogitsProcessor` (a token that would complete an n-gram already present is -inf);
4. `frequency_penalty` and `presence_penalty` over the generated tokens only (vLLM's output tokens),
   as vllm/model_executor/layers/utils.py `apply_penalties` defines them:
   `logits -= frequency_penalty * count(token)`, then `logits -= presence_penalty * (count(token) > 0)`;
   then the constraint mask (these steps act on each token alone, so masking first changes nothing);
5. the warpers, after the mask so that they truncate the allowed distribution, as top-k/top-p do:
   `Sample`'s temperature, top-k, top-p, min-p, then `typical_p` (Meister et al., arXiv 2202.00666),
   `epsilon_cutoff` and `eta_cutoff` (Hewitt et al., "Truncation Sampling as Language Model
   Desmoothing", arXiv 2210.15191) — transformers' order and exact `TypicalLogitsWarper`,
   `EpsilonLogitsWarper`, `EtaLogitsWarper` (each keeps at least one token). `Greedy` applies them
   too and takes the arg-max of what they keep (transformers' `generate(do_sample=False)` ignores
   warpers; epsilon and eta never remove the arg-max, typical can).

"Prompt and generated tokens" is transformers' `input_ids`: the root's tokens (the prompt, chat
template included) and every token after it, tokens the grammar forced (jump-forward) included.
A policy with none of these set computes nothing extra. Reported log-probabilities stay those of
the unprocessed model distribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field, fields, is_dataclass

import torch

MAX_REPETITION_PENALTY = 1e30  # a float32 logit (up to ~1e2) divided by 1e-30 stays finite (max ~3.4e38)
OPENAI_PENALTY = 2.0  # OpenAI's (and vLLM's SamplingParams._verify_args) range for presence/frequency: [-2, 2]


@dataclass(frozen=True)
class Processors:
    """The processor settings shared by `Greedy` and `Sample` (keyword-only; neutral defaults)."""

    _: KW_ONLY
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] | None = field(default=None, hash=False)

    def check_processors(self) -> None:
        """Validate the settings (called from the subclass' `__post_init__`); errors name the field."""
        for name in ("typical_p", "epsilon_cutoff", "eta_cutoff", "repetition_penalty"):
            _number(name, getattr(self, name))
        for name in ("presence_penalty", "frequency_penalty"):
            value = _number(name, getattr(self, name))
            if not -OPENAI_PENALTY <= value <= OPENAI_PENALTY:
                raise ValueError(f"{name} must be in [-2, 2] (OpenAI's range), got {value}")
        if not 0 < self.typical_p <= 1:
            raise ValueError(f"typical_p must be in (0, 1] (1 disables it), got {self.typical_p}")
        for name in ("epsilon_cutoff", "eta_cutoff"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1) (0 disables it), got {getattr(self, name)}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}")
        if not 1 / MAX_REPETITION_PENALTY <= self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise ValueError(
                f"repetition_penalty must be within [{1 / MAX_REPETITION_PENALTY:g}, {MAX_REPETITION_PENALTY:g}] "
                f"(float32 logits divided by it overflow outside), got {self.repetition_penalty}"
            )
        size = self.no_repeat_ngram_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"no_repeat_ngram_size must be an int >= 0 (0 disables it), got {size!r}")
        if self.logit_bias is not None:
            object.__setattr__(self, "logit_bias", _bias_table(self.logit_bias))

    @property
    def penalizes(self) -> bool:
        """Whether a history-dependent step (bias, penalties, n-gram ban) is set."""
        return bool(
            self.logit_bias
            or self.repetition_penalty != 1.0
            or self.no_repeat_ngram_size
            or self.presence_penalty
            or self.frequency_penalty
        )

    @property
    def truncates(self) -> bool:
        return self.typical_p < 1.0 or self.epsilon_cutoff > 0.0 or self.eta_cutoff > 0.0

    @property
    def processes(self) -> bool:
        """Whether any processor is set (none: the plain path, nothing extra computed)."""
        return self.penalizes or self.truncates

    def check_vocab(self, vocab_size: int) -> None:
        """A `logit_bias` token id outside the model's vocabulary is an error naming it."""
        outside = sorted(t for t in self.logit_bias or () if t >= vocab_size)
        if outside:
            raise ValueError(f"logit_bias token ids {outside[:5]} are outside the vocabulary [0, {vocab_size})")

    def penalize(
        self, logits: torch.Tensor, histories: Sequence[Sequence[int]], generated: Sequence[int]
    ) -> torch.Tensor:
        """Steps 1-4 on a batch of rows ([batch, vocab]); `histories[i]` is row i's prompt and
        generated tokens, of which the last `generated[i]` were generated. A new tensor."""
        vocab = logits.shape[-1]
        scores = logits.clone()
        if self.logit_bias:
            self.check_vocab(vocab)
            scores = add_logit_bias(scores, self.logit_bias)
        if self.repetition_penalty != 1.0:
            seen = token_counts(histories, vocab, scores.device) > 0
            scores = repetition_penalty(scores, seen, self.repetition_penalty)
        if self.no_repeat_ngram_size:
            scores = no_repeat_ngram(scores, histories, self.no_repeat_ngram_size)
        if self.presence_penalty or self.frequency_penalty:
            outputs = [history[len(history) - n :] if n else () for history, n in zip(histories, generated)]
            counts = token_counts(outputs, vocab, scores.device)
            scores = openai_penalties(scores, counts, self.presence_penalty, self.frequency_penalty)
        return scores

    def truncate(self, scores: torch.Tensor) -> torch.Tensor:
        """Step 5's typical, epsilon and eta warpers (after temperature, top-k, top-p, min-p)."""
        if self.typical_p < 1.0:
            scores = typical(scores, self.typical_p)
        if self.epsilon_cutoff > 0.0:
            scores = epsilon_cutoff(scores, self.epsilon_cutoff)
        if self.eta_cutoff > 0.0:
            scores = eta_cutoff(scores, self.eta_cutoff)
        return scores


def is_neutral(name: str, value) -> bool:
    """Whether `value` leaves processor `name` off (None, or its default; an empty `logit_bias`)."""
    default = next(f.default for f in fields(Processors) if f.name == name)
    return value is None or value == default or (name == "logit_bias" and not value)


def check_search(search: object, vocab_size: int) -> None:
    """Check the `logit_bias` of `search` and of every policy it holds (`sample=` ...) against the
    model's vocabulary, before any generation starts."""
    held = [getattr(search, f.name) for f in fields(search)] if is_dataclass(search) else []
    for policy in (search, *held):
        if isinstance(policy, Processors):
            policy.check_vocab(vocab_size)


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _bias_table(bias) -> dict[int, float]:
    if not isinstance(bias, Mapping):
        raise ValueError(f"logit_bias must be a mapping of token id to bias, got {type(bias).__name__}")
    table: dict[int, float] = {}
    for token, value in bias.items():
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise ValueError(f"logit_bias keys must be token ids (ints >= 0), got {token!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"logit_bias[{token}] must be a finite number, got {value!r}")
        table[token] = float(value)
    return table


# --- the processors, each on a batch of rows ----------------------------------------------------


def token_counts(histories: Sequence[Sequence[int]], vocab_size: int, device) -> torch.Tensor:
    """[batch, vocab] occurrence counts (int64); rows padded with a spare column past the vocabulary,
    as vLLM's `get_token_bin_counts_and_mask`."""
    width = max((len(h) for h in histories), default=0)
    ids = torch.full((len(histories), max(width, 1)), vocab_size, dtype=torch.long)
    for i, history in enumerate(histories):
        if history:
            ids[i, : len(history)] = torch.as_tensor(list(history), dtype=torch.long)
    ids = ids.to(device).clamp_(max=vocab_size)
    counts = torch.zeros((len(histories), vocab_size + 1), dtype=torch.long, device=device)
    counts.scatter_add_(1, ids, torch.ones_like(ids))
    return counts[:, :vocab_size]


def add_logit_bias(scores: torch.Tensor, bias: Mapping[int, float]) -> torch.Tensor:
    """`scores[:, token] += bias[token]` (vLLM's `LogitBiasLogitsProcessor.apply`), in place."""
    tokens = torch.tensor(list(bias), dtype=torch.long, device=scores.device)
    values = torch.tensor(list(bias.values()), dtype=torch.float32, device=scores.device).to(scores.dtype)
    scores[:, tokens] += values
    return scores


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' `RepetitionPenaltyLogitsProcessor`: a seen token's score divided by `penalty`
    when positive, multiplied when negative (the same elementwise operations, so the same bits)."""
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def no_repeat_ngram(scores: torch.Tensor, histories: Sequence[Sequence[int]], size: int) -> torch.Tensor:
    """transformers' `NoRepeatNGramLogitsProcessor`: -inf for every token that would complete an
    n-gram of `size` tokens already in the row's history."""
    vocab = scores.shape[-1]
    banned = torch.zeros_like(scores, dtype=torch.bool)
    for i, history in enumerate(histories):
        if len(history) < size:
            continue
        prefix = tuple(history[len(history) + 1 - size :])
        tokens = {
            history[j + size - 1]
            for j in range(len(history) - size + 1)
            if tuple(history[j : j + size - 1]) == prefix and history[j + size - 1] < vocab
        }
        if tokens:
            banned[i, list(tokens)] = True
    return scores.masked_fill(banned, float("-inf"))


def openai_penalties(scores: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float) -> torch.Tensor:
    """vLLM's `apply_penalties` (vllm/model_executor/layers/utils.py) for OpenAI's two penalties:
    `scores -= frequency * counts`, then `scores -= presence * (counts > 0)`, counts over the
    generated tokens."""
    frequency_t = torch.full((scores.shape[0],), frequency, dtype=torch.float32, device=scores.device)
    presence_t = torch.full((scores.shape[0],), presence, dtype=torch.float32, device=scores.device)
    scores = scores - frequency_t.unsqueeze(1) * counts
    return scores - presence_t.unsqueeze(1) * (counts > 0)


def typical(scores: torch.Tensor, mass: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """transformers' `TypicalLogitsWarper`: keep the tokens whose surprisal is closest to the
    entropy until their probability mass reaches `mass`."""
    normalized = torch.nn.functional.log_softmax(scores, dim=-1)
    p = torch.exp(normalized)
    entropy = -(normalized * p).nansum(-1, keepdim=True)
    shifted = torch.abs((-normalized) - entropy)
    sorted_shifted, order = torch.sort(shifted, descending=False)
    cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1)
    last.clamp_(max=sorted_shifted.shape[-1] - 1)
    remove_sorted = sorted_shifted > sorted_shifted.gather(1, last.view(-1, 1))
    remove_sorted[..., :min_tokens_to_keep] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


def epsilon_cutoff(scores: torch.Tensor, epsilon: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """transformers' `EpsilonLogitsWarper`: drop tokens with probability below `epsilon`."""
    remove = scores.softmax(dim=-1) < epsilon
    top_k = min(min_tokens_to_keep, scores.size(-1))
    remove &= scores < torch.topk(scores, top_k)[0][..., -1, None]
    return scores.masked_fill(remove, float("-inf"))


def eta_cutoff(scores: torch.Tensor, epsilon: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """transformers' `EtaLogitsWarper`: drop tokens with probability below
    eta = min(epsilon, sqrt(epsilon) * exp(-entropy))."""
    probabilities = scores.softmax(dim=-1)
    entropy = torch.distributions.Categorical(logits=scores).entropy()
    eps = torch.tensor(epsilon, device=scores.device)
    eta = torch.min(eps, torch.sqrt(eps) * torch.exp(-entropy))[..., None]
    remove = probabilities < eta
    top_k = min(min_tokens_to_keep, scores.size(-1))
    remove &= scores < torch.topk(scores, top_k)[0][..., -1, None]
    return scores.masked_fill(remove, float("-inf"))
