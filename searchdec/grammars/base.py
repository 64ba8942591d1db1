"""The constraint-backend contract: `Constraint` (a grammar compiled once for one tokenizer) and `State`
(where one hypothesis stands in it), declared once; the `Backend` that compiles a spec into a
Constraint; the registry that picks a backend by the name a spec carries; and the compile cache.

The split follows vLLM's structured-output backends (`vllm/v1/structured_output/backend_types.py`):
an engine-level compiler and a request-level matcher with a few verbs, plus `fork`, since a search
branches on every expansion. States are immutable values: every verb that moves returns a new State
and leaves its receiver as it was, so a search keeps parents and children side by side. Every backend
passes the same suite (tests/test_backend_contract.py).

A Constraint compiles against `TokenizerInfo` (the tokenizer, the width of the logits, the
end-of-sequence ids, each token's bytes), never a whole model: `spec.compile(x)` takes a Model, a
Hugging Face tokenizer or a TokenizerInfo, and caches per spec and tokenizer (grammars/compile.py).

Masks use one layout whatever the backend (llguidance's): int32 words, token i is bit i % 32 of word
i // 32; `allocate_bitmask`, `unpack_bitmask`, `fill_masks` and `apply_masks` work on it. A batch's masks are
filled per State class in one call (`State.fill_rows`; llguidance fills its rows in parallel).

Adding a backend: one module with a `State`, a `Constraint` and a `Backend` subclass, and one line
`register_backend(MyBackend())` in `searchdec/grammars/__init__.py`; specs then name it with
`backend="my-backend"`.

Beyond the grammar, a `Check` (declared here too) enforces what no context-free grammar can hold (JSON
Schema's `uniqueItems` or `not`, SQL scope): its `CheckState` reads the output so far, byte by byte, with
the grammar's State beside it, and answers a `Verdict`. grammars/checks.py joins a Constraint and its
checks into one Constraint whose States carry both (forked together, immutable), and which is `dead` the
moment a check is violated; the decoding step (search/rows.py) then backtracks.
"""

from __future__ import annotations

import enum
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from searchdec.errors import ConstraintError
from searchdec.models.vocab import token_bytes

# --- the contract -------------------------------------------------------------------------------


class State(ABC):
    """Where one hypothesis stands in a compiled grammar. Immutable: `advance`, `advance_many`,
    `rollback` and `fork` return States and leave this one unchanged.

    How the verbs agree (what tests/test_backend_contract.py checks for every backend):
    - `fill` sets exactly the tokens `allows` accepts, and `advance` succeeds exactly on them;
    - `accepting` is True exactly when an end-of-sequence token is allowed;
    - once `finished`, only end-of-sequence is allowed and `closing` is `(0, None)`;
    - every output from here begins with the bytes of `forced` (each allowed token's bytes and the
      forced bytes are prefixes of one another), and end-of-sequence is not allowed while any is forced;
    - `closing(limit)` is `(n, first)` for every limit >= n and None below n; `first` is allowed.
    """

    __slots__ = ()

    @property
    @abstractmethod
    def accepting(self) -> bool:
        """The text so far is a complete output: end-of-sequence is allowed now."""

    @property
    @abstractmethod
    def finished(self) -> bool:
        """Nothing can follow but end-of-sequence (or it has been consumed): the hypothesis may stop here."""

    @property
    def dead(self) -> bool:
        """No continuation can satisfy the constraint. A backend whose `advance` refuses every forbidden
        token never gets here; one that can reach an error state says so, and so does a state with checks
        (grammars/checks.py) once one is violated. A dead state allows no token."""
        return False

    @property
    def may_die(self) -> bool:
        """Whether a hypothesis from here can turn `dead` after a token the mask allowed (a check beyond the
        grammar that decides only once a value is complete): the decoding step then keeps alternatives to
        backtrack to (search/rows.py)."""
        return False

    @property
    def steer_every_token(self) -> bool:
        """Whether the search's budget steering (search/budget.py) must check `closing` on every token,
        not only once the budget is tight: a state that one token can close for good while something
        it requires is still missing (a lexical constraint over a grammar) says True."""
        return False

    @property
    @abstractmethod
    def forced(self) -> list[int]:
        """Tokens the grammar fixes from here (empty when it fixes nothing): they can be appended
        without a forward pass (jump-forward). Every allowed continuation starts with their bytes."""

    @abstractmethod
    def allows(self, token_id: int) -> bool:
        """Whether `token_id` may come next."""

    @abstractmethod
    def advance(self, token_id: int) -> State:
        """The state after `token_id`; raises ValueError when the grammar forbids it."""

    def advance_many(self, token_ids: list[int]) -> State:
        """The state after `token_ids` in order; raises ValueError at the first one forbidden."""
        state = self
        for token in token_ids:
            state = state.advance(token)
        return state

    def fork(self) -> State:
        """A State that moves independently of this one (immutable states: this one)."""
        return self

    @abstractmethod
    def rollback(self, n: int) -> State:
        """The state `n` tokens earlier (n = 0: this one); ValueError when fewer were consumed."""

    @abstractmethod
    def fill(self, bitmask: torch.Tensor, row: int = 0) -> None:
        """Write the allowed tokens into row `row` of an int32 bitmask (see `allocate_bitmask`)."""

    @classmethod
    def fill_rows(cls, states: list[State], rows: list[int], bitmask: torch.Tensor) -> None:
        """`states[k].fill(bitmask, rows[k])` for states of this class, all at once: a backend whose engine
        fills many rows in one call (llguidance, in parallel outside the GIL) overrides it. `fill_masks`
        groups a batch's states by class and calls this once per class."""
        for state, row in zip(states, rows):
            state.fill(bitmask, row)

    @abstractmethod
    def closing(self, limit: int) -> tuple[int, int | None] | None:
        """How many tokens (end-of-sequence included) complete the output from here, and the first of
        them; None when no completion is found within `limit` tokens; `(0, None)` when finished.
        Exact or an upper bound, as the backend documents (the search's budget steering uses it)."""

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor:
        """The allowed tokens as a boolean mask over the vocabulary."""
        bitmask = allocate_bitmask(1, vocab_size)
        self.fill(bitmask)
        return unpack_bitmask(bitmask, vocab_size)[0]


def rollback_by_parent(state, n: int):
    """`state` `n` tokens earlier, for a State that keeps the State it advanced from in `_parent` (states
    that wrap another State and their own per-token data: lexical.py, checks.py)."""
    for _ in range(n):
        if state._parent is None:
            raise ValueError(f"cannot roll back {n} tokens: fewer were consumed")
        state = state._parent
    return state


class Constraint(ABC):
    """A grammar compiled for one tokenizer; `start()` gives a fresh State for each new hypothesis."""

    backend: str  # the registry name of the backend that compiled it
    vocab_size: int  # the width of the masks its states fill
    description: str  # what the spec asked for, for messages ("regex '[0-9]+'", "JSON Schema")

    @abstractmethod
    def start(self) -> State:
        """The state before any token."""

    def check_budget(self, max_tokens: int) -> None:
        """Raise a ConstraintError, before any forward, when no output of at most `max_tokens` tokens
        can satisfy this constraint and it can tell up front (a lexical constraint whose phrases do not
        fit); by default nothing is known, and budget steering handles the rest."""
        return None

    def __repr__(self) -> str:
        return f"Constraint({self.description}, backend={self.backend!r})"


class Backend(ABC):
    """Compiles specs into Constraints. `name` is what a spec's `backend` field says."""

    name: str

    @abstractmethod
    def check(self, spec: Any) -> None:
        """Raise ConstraintError when this backend cannot compile this kind of spec or one of its
        options (called when the spec is made, before any tokenizer is known)."""

    @abstractmethod
    def compile(self, spec: Any, tokenizer: TokenizerInfo) -> Constraint:
        """`spec` compiled for `tokenizer`; raises a ConstraintError subclass naming the cause."""


# --- checks beyond the grammar ------------------------------------------------------------------


class Verdict(enum.Enum):
    """What a check says of the output so far."""

    OK = "ok"  # the output, if it ended here, satisfies the check (end-of-sequence may come, as far as it goes)
    UNDECIDED = "undecided"  # it may not end here, but some continuation may still satisfy the check
    VIOLATED = "violated"  # no output that begins with the text so far satisfies the check: the hypothesis is dead


class CheckState(ABC):
    """Where one hypothesis stands for one check. Immutable, like `State`: `feed` returns a new one.

    How it agrees with its check's reference (what tests/test_checks*.py verify for every check): for
    every document, feeding its bytes in any split (token by token) ends in OK exactly when the reference
    validator (jsonschema, SQLite EXPLAIN, ...) accepts it; VIOLATED is final (once said, no further
    bytes are fed); a state says VIOLATED no later than the first byte after which no continuation can
    pass, when the check can tell that (a check may also decide later: the search backtracks then)."""

    __slots__ = ()

    @property
    @abstractmethod
    def verdict(self) -> Verdict:
        """The check's answer for the output so far (see `Verdict`)."""

    @abstractmethod
    def feed(self, data: bytes, grammar: State | None) -> CheckState:
        """The state once `data` (the bytes of the next token, possibly b"") follows the output so far;
        `grammar` is the grammar's State after them (its parse position, for a check that needs it;
        None when the check runs on free text)."""

    def refused(self) -> frozenset[int]:
        """Tokens this check knows would violate it if they came next (masked with the grammar's mask);
        by default none: a violation is found once the token is taken, and the search backtracks."""
        return frozenset()

    def completion(self) -> bytes | None:
        """Guidance for a closing walk (`State.closing`), which the grammar makes without knowing the check:
        None when the grammar's own walk from here satisfies the check as far as it can tell (the default);
        bytes to write next where the grammar's walk would be refused (a required key still missing before a
        closing brace: its name); b"" to follow the grammar's walk token by token, asking again each time."""
        return None


class Check(ABC):
    """A rule over the output text that a grammar cannot express, compiled once per tokenizer (the
    `start` State of each hypothesis is derived from it). `name` says what it enforces, for messages
    and traces ("uniqueItems at /tags")."""

    name: str

    @abstractmethod
    def start(self, tokenizer: TokenizerInfo) -> CheckState:
        """The state before any output, for hypotheses decoded with `tokenizer`."""

    def __repr__(self) -> str:
        return f"Check({self.name})"


# --- the registry -------------------------------------------------------------------------------

_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Make `backend` available to specs by its name (a name can be taken once)."""
    if not isinstance(backend, Backend):
        raise TypeError(f"register_backend() takes a grammars.Backend, got {type(backend).__name__}")
    known = _BACKENDS.get(backend.name)
    if known is not None and type(known) is not type(backend):
        raise ValueError(f"a grammar backend named {backend.name!r} is already registered ({type(known).__name__})")
    _BACKENDS[backend.name] = backend
    return backend


def backend_named(name: str) -> Backend:
    """The registered backend called `name`; ConstraintError naming the known ones if there is none."""
    found = _BACKENDS.get(name)
    if found is None:
        raise ConstraintError(f"unknown grammar backend {name!r}; choose one of {', '.join(sorted(_BACKENDS))}")
    return found


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


# --- tokenizer information ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TokenizerInfo:
    """What compiling a constraint needs from a tokenizer. Made by `tokenizer_info` (one per tokenizer
    and logits width); holds the tokenizer weakly so the compile cache does not keep it alive.

    Backends keep per-tokenizer objects they build once (llguidance's tokenizer, outlines-core's
    vocabulary) in `prepared`."""

    _tokenizer: Callable[[], Any]  # a weak reference to the Hugging Face tokenizer
    vocab_size: int  # the width of the logits (may exceed the tokenizer's length)
    eos_token_ids: frozenset[int]
    special_token_ids: frozenset[int]
    compiled: OrderedDict = field(default_factory=OrderedDict, repr=False)
    prepared: dict = field(default_factory=dict, repr=False)

    @property
    def tokenizer(self):
        tokenizer = self._tokenizer()
        if tokenizer is None:
            raise ConstraintError("the tokenizer this constraint was compiled for is gone")
        return tokenizer

    @cached_property
    def vocab_bytes(self) -> list[bytes]:
        """Each token id's bytes (special tokens: their text; ids past the tokenizer: b"")."""
        return token_bytes(self.tokenizer, self.vocab_size)

    def prepare(self, key: str, build: Callable[[], Any]) -> Any:
        """The object `build()` makes for this tokenizer, built on first use."""
        if key not in self.prepared:
            self.prepared[key] = build()
        return self.prepared[key]


_INFOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_info(source, vocab_size: int | None = None) -> TokenizerInfo:
    """The TokenizerInfo of `source`: a TokenizerInfo (returned as is), a model (anything with
    `.tokenizer`, `.vocab_size` and `.eos_token_ids`) or a Hugging Face tokenizer (`vocab_size`
    defaults to its length; end-of-sequence is its `eos_token_id`). One per tokenizer, width and
    end-of-sequence set, so compiled constraints are shared."""
    if isinstance(source, TokenizerInfo):
        return source
    if hasattr(source, "tokenizer") and hasattr(source, "vocab_size"):
        tokenizer, width = source.tokenizer, source.vocab_size
        eos = frozenset(getattr(source, "eos_token_ids", None) or _tokenizer_eos(tokenizer))
    elif callable(getattr(source, "get_vocab", None)):
        tokenizer, width, eos = source, vocab_size or len(source), frozenset(_tokenizer_eos(source))
    else:
        raise TypeError(
            "a constraint compiles for a model, a Hugging Face tokenizer or a TokenizerInfo, "
            f"got {type(source).__name__}"
        )
    known = _INFOS.setdefault(tokenizer, {})
    key = (width, eos)
    if key not in known:
        special = frozenset(getattr(tokenizer, "all_special_ids", ()))
        known[key] = TokenizerInfo(weakref.ref(tokenizer), width, eos, special)
    return known[key]


def _tokenizer_eos(tokenizer) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ConstraintError("the tokenizer has no end-of-sequence token, which a constraint needs to end outputs")
    return [eos]


# --- masks --------------------------------------------------------------------------------------


def allocate_bitmask(rows: int, vocab_size: int) -> torch.Tensor:
    """An int32 bitmask of `rows` rows with every token allowed (token i is bit i % 32 of word i // 32)."""
    return torch.full((rows, (vocab_size + 31) // 32), -1, dtype=torch.int32)


_BITS = torch.arange(32, dtype=torch.int32)
_WEIGHTS = torch.tensor([1 << i for i in range(31)] + [-(1 << 31)], dtype=torch.int64)  # bit 31: the sign


def pack_bitmask(allowed: torch.Tensor) -> torch.Tensor:
    """The int32 words of a boolean [vocab_size] mask (one row of a bitmask; unused bits are 0)."""
    bits = torch.zeros(((allowed.numel() + 31) // 32) * 32, dtype=torch.bool)
    bits[: allowed.numel()] = allowed
    return (bits.view(-1, 32).long() * _WEIGHTS).sum(-1).to(torch.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A boolean [rows, vocab_size] mask from an int32 bitmask."""
    bits = (bitmask.unsqueeze(-1) >> _BITS) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def fill_masks(states: list[State], bitmask: torch.Tensor, rows: list[int] | None = None) -> None:
    """Fill row `rows[k]` (default: row k) of `bitmask` for `states[k]`: each distinct State once (a row
    whose State is the same object as an earlier row's copies that row), and each class's states in one
    `fill_rows` call."""
    rows = list(range(len(states))) if rows is None else rows
    first: dict[int, int] = {}  # id(state) -> the row it is filled in
    groups: dict[type, tuple[list[State], list[int]]] = {}
    copies: list[tuple[int, int]] = []
    for state, row in zip(states, rows):
        if id(state) in first:
            copies.append((row, first[id(state)]))
            continue
        first[id(state)] = row
        group = groups.setdefault(type(state), ([], []))
        group[0].append(state)
        group[1].append(row)
    for kind, (members, at) in groups.items():
        kind.fill_rows(members, at, bitmask)
    for row, source in copies:
        bitmask[row] = bitmask[source]


def masked_logits(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """`logits` with every token `bitmask` forbids set to -inf (a new tensor; `logits` is kept).

    The bitmask is unpacked with plain tensor ops: llguidance's own helper is a torch.compile kernel
    that recompiles for every new batch shape and then fails on inference tensors."""
    allowed = unpack_bitmask(bitmask, logits.shape[-1]).to(logits.device)
    return logits.masked_fill(~allowed, float("-inf"))


def apply_masks(logits: torch.Tensor, states: list[State]) -> torch.Tensor:
    """`logits` with every token a row's state forbids set to -inf (a new tensor; `logits` is kept)."""
    bitmask = allocate_bitmask(len(states), logits.shape[-1])
    fill_masks(states, bitmask)
    return masked_logits(logits, bitmask)
