"""Constraint and State: a grammar compiled once for a tokenizer, and the per-hypothesis parse state.

The interface follows vLLM's split between an engine-level compiled grammar and a request-level
matcher (`vllm/v1/structured_output/backend_types.py`), plus `fork`, since a search branches on
every expansion. The backend is llguidance (measured best: compile ~1 ms, mask ~5 µs, fork ~2 µs,
strict JSON Schema semantics). A State never changes once handed out: `advance` returns a new one,
so a search may keep parents and children side by side.
"""

from __future__ import annotations

import json

import llguidance
import llguidance.torch as llg_torch
import torch


class State:
    """Where one hypothesis stands in the grammar."""

    __slots__ = ("_matcher", "_closer")

    def __init__(self, matcher: llguidance.LLMatcher, closer: Closer) -> None:
        self._matcher = matcher
        self._closer = closer

    def __repr__(self) -> str:
        return f"State(accepting={self.accepting}, dead={self.dead})"

    @property
    def accepting(self) -> bool:
        """The text so far is a complete output (end-of-sequence is allowed now)."""
        return self._matcher.is_accepting()

    @property
    def dead(self) -> bool:
        """No continuation can satisfy the grammar (an invalid token was forced in)."""
        return self._matcher.is_error()

    @property
    def finished(self) -> bool:
        """The grammar has ended (end-of-sequence consumed, or nothing more can follow)."""
        return self._matcher.is_stopped()

    @property
    def forced(self) -> list[int]:
        """Tokens the grammar fixes from here: they can be appended without a forward pass."""
        return self._matcher.compute_ff_tokens()

    def allows(self, token_id: int) -> bool:
        return self._matcher.validate_tokens([token_id]) == 1

    def advance(self, token_id: int) -> State:
        """The state after `token_id`; raises ValueError when the grammar forbids it."""
        matcher = self._matcher.deep_copy()
        if not matcher.consume_token(token_id):
            raise ValueError(f"token {token_id} is not allowed here: {matcher.get_error()}")
        return State(matcher, self._closer)

    def advance_many(self, token_ids: list[int]) -> State:
        matcher = self._matcher.deep_copy()
        if not matcher.consume_tokens(token_ids):
            raise ValueError(f"tokens {token_ids} are not allowed here: {matcher.get_error()}")
        return State(matcher, self._closer)

    def fork(self) -> State:
        return State(self._matcher.deep_copy(), self._closer)

    def rollback(self, n: int) -> State:
        """The state `n` tokens earlier."""
        matcher = self._matcher.deep_copy()
        if not matcher.rollback(n):
            raise ValueError(f"cannot roll back {n} tokens: {matcher.get_error()}")
        return State(matcher, self._closer)

    def closing(self, limit: int) -> tuple[int, int | None] | None:
        """How many tokens (end-of-sequence included) suffice to complete the output from here, and the
        first of them; None when no completion is found within `limit` tokens.

        The completion is a greedy walk: forced tokens first, then the first token the grammar allows
        among those that close structure or make short values (quote, brackets, comma, digit, letter),
        then the first allowed token that is not whitespace. It is an upper bound: the walk uses single-character
        tokens where a model may close in fewer."""
        matcher = self._matcher.deep_copy()
        steps, first = 0, None
        while steps <= limit:
            if matcher.is_accepting() or matcher.is_stopped():
                if not matcher.is_stopped():
                    steps, first = steps + 1, self._closer.tokenizer.eos_token if first is None else first
                return (steps, first) if steps <= limit else None
            tokens = matcher.compute_ff_tokens()[:1] or [self._closer.next_token(matcher)]
            if tokens[0] is None or not matcher.consume_tokens(tokens):
                return None
            first = tokens[0] if first is None else first
            steps += 1
        return None

    def fill(self, bitmask: torch.Tensor, row: int = 0) -> None:
        """Write this state's allowed tokens into row `row` of an llguidance bitmask (int32, 32 tokens a word)."""
        llg_torch.fill_next_token_bitmask(self._matcher, bitmask, row)

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor:
        """A boolean mask over the vocabulary."""
        bitmask = llg_torch.allocate_token_bitmask(1, vocab_size)
        self.fill(bitmask)
        return unpack_bitmask(bitmask, vocab_size)[0]


class Closer:
    """The tokens a closing walk prefers, for one tokenizer (see `State.closing`)."""

    PREFERRED = tuple('"}])>,;0a')  # closes JSON and most bracketed structure soonest

    def __init__(self, tokenizer: llguidance.LLTokenizer, preferred: tuple[str, ...] = PREFERRED) -> None:
        self.tokenizer = tokenizer
        self.eos = set(tokenizer.eos_tokens)
        self._texts = preferred
        self.preferred: list[int] | None = None  # tokenized on first use: compiling stays cheap
        self.characters: list[int] = []
        self.quotes: list[int] = []

    def _still_free(self, matcher: llguidance.LLMatcher, token: int) -> bool:
        """Whether the walk is still inside free text after `token` (a quote that does not close)."""
        after = matcher.deep_copy()
        after.consume_tokens([token])
        return _free_text(self, after)

    def next_token(self, matcher: llguidance.LLMatcher) -> int | None:
        if self.preferred is None:
            self.preferred = _single_tokens(self.tokenizer, self._texts)
            self.quotes = _single_tokens(self.tokenizer, ['"', "'", "`", "]"])
            # Then any printable ASCII character, checked one by one (validate_tokens takes ~0.5 µs;
            # a full mask takes tens of µs), before falling back to the full mask.
            printable = [chr(c) for c in range(33, 127)]
            self.characters = [t for t in _single_tokens(self.tokenizer, printable) if t not in self.preferred]
        allowed = [token for token in self.preferred if matcher.validate_tokens([token]) == 1]
        if len(allowed) >= 4:
            # Nearly everything is allowed: the walk is inside free text (a string literal), where any
            # preferred token would only lengthen it. Close the quote first.
            for token in self.quotes:
                if matcher.validate_tokens([token]) == 1 and not self._still_free(matcher, token):
                    return token
        if allowed:
            return allowed[0]
        for token in self.characters:
            if matcher.validate_tokens([token]) == 1:
                return token
        words = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.int32)
        for token in unpack_bitmask(words.unsqueeze(0), words.numel() * 32)[0].nonzero().flatten().tolist():
            if token not in self.eos and self.tokenizer.decode_bytes([token]).strip():
                return token
        return None


def _free_text(closer: Closer, matcher: llguidance.LLMatcher) -> bool:
    return sum(matcher.validate_tokens([t]) == 1 for t in closer.preferred) >= 4


def _single_tokens(tokenizer: llguidance.LLTokenizer, texts) -> list[int]:
    found = [tokenizer.tokenize_str(text) for text in texts]
    return [ids[0] for ids in found if len(ids) == 1]


class Constraint:
    """A grammar compiled for one tokenizer; `start()` gives a fresh State for each new hypothesis."""

    def __init__(
        self,
        grammar: str,
        tokenizer: llguidance.LLTokenizer,
        vocab_size: int,
        description: str,
        closing: tuple[str, ...] = Closer.PREFERRED,
    ) -> None:
        self.grammar = grammar
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.description = description
        self._initial = llguidance.LLMatcher(tokenizer, grammar)
        if self._initial.is_error():
            raise ValueError(self._initial.get_error())
        self._closer = Closer(tokenizer, closing)

    def __repr__(self) -> str:
        return f"Constraint({self.description})"

    def start(self) -> State:
        return State(self._initial.deep_copy(), self._closer)


def apply_masks(logits: torch.Tensor, states: list[State]) -> torch.Tensor:
    """`logits` with every token a row's state forbids set to -inf (a new tensor; `logits` is kept).

    The bitmask is unpacked with plain tensor ops: llguidance's own helper is a torch.compile kernel
    that recompiles for every new batch shape and then fails on inference tensors."""
    bitmask = llg_torch.allocate_token_bitmask(len(states), logits.shape[-1])
    for row, state in enumerate(states):
        state.fill(bitmask, row)
    return logits.masked_fill(~unpack_bitmask(bitmask, logits.shape[-1]).to(logits.device), float("-inf"))


_BITS = torch.arange(32, dtype=torch.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A boolean [rows, vocab_size] mask from llguidance's int32 bitmask (token i is bit i % 32 of word i // 32)."""
    bits = (bitmask.unsqueeze(-1) >> _BITS) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def grammar_json(kind: str, body) -> str:
    """An llguidance top-level grammar holding one grammar of `kind` ("lark_grammar", "json_schema")."""
    return json.dumps({"grammars": [{kind: body}]})
