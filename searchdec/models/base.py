"""The model-runtime contract: what the layers above need from a model, declared once.

A runtime computes next-token logits for a batch of hypotheses through a prefix cache (`logits`,
`logits_last`: a hypothesis is any object with `parent` and `new_tokens`, and only tokens after its
nearest cached ancestor are fed), lets a search drop entries it will not expand again (`cache`),
counts what it computed (`stats`: forward calls and tokens), and exposes its tokenizer (encode,
decode, chat template, end-of-sequence ids, vocabulary as bytes for grammar engines). The
transformers/torch runtime (`models/model.py`) and the llama.cpp runtime (`models/llamacpp.py`)
implement it; another runtime is one more module implementing the same members.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from searchdec.errors import PromptTooLongError


class TokenNode(Protocol):
    """A hypothesis as a runtime sees it: the tokens it appends to its parent (a root's: its prompt)."""

    parent: TokenNode | None
    new_tokens: tuple[int, ...]


class Runtime(ABC):
    """A causal LM behind `logits(nodes)`. Attributes every runtime sets: `cache` (with `discard(node)`,
    `__contains__`, `__len__`), `stats` (`calls`, `tokens`), `tokenizer`, `name`."""

    cache: Any
    stats: Any
    tokenizer: Any
    name: str

    @abstractmethod
    def logits(self, nodes: Sequence[TokenNode]) -> torch.Tensor:
        """Next-token logits [len(nodes), vocab] (float32), each node forwarded over its cached prefix."""

    @abstractmethod
    def logits_last(self, nodes: Sequence[TokenNode], keep: int) -> torch.Tensor:
        """Logits of each node's last `keep` positions [len(nodes), keep, vocab]."""

    def logits_tree(self, node: TokenNode, parents: Sequence[int]) -> torch.Tensor:
        """Logits of the token tree `node.new_tokens` (`parents[j]`: token j's parent, -1 the root
        `node.parent`) in one forward, [1 + len(parents), vocab]: row 0 after the root, row 1 + j after
        token j's path. Optional: a runtime without tree attention raises NotImplementedError."""
        raise NotImplementedError(f"runtime {type(self).__name__} cannot forward a token tree (no tree attention)")

    # Tokenizer members: both runtimes hold a Hugging Face tokenizer (`self.tokenizer`); a runtime
    # with another kind of tokenizer overrides these.

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, tokens: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of `messages` rendered by the model's chat template (`tools` go to it too)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"model {self.name!r} has no chat template; pass a plain string prompt")
        text = self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
        )
        return self.encode(text, add_special_tokens=False)

    def check_prompt_length(self, n_tokens: int) -> None:
        """Raise `PromptTooLongError` when a prompt of `n_tokens` leaves no room in the context window."""
        if n_tokens >= self.context_window:
            raise PromptTooLongError(
                f"prompt has {n_tokens} tokens but model {self.name!r} has a context window of "
                f"{self.context_window} tokens (at least one must be left to generate)"
            )

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Width of the logits (may exceed the tokenizer's vocabulary)."""

    @property
    @abstractmethod
    def context_window(self) -> int: ...

    @property
    @abstractmethod
    def eos_token_ids(self) -> frozenset[int]: ...

    @property
    @abstractmethod
    def vocab_bytes(self) -> list[bytes]:
        """Each token id's bytes, as grammar engines read them."""


def last_token(node: TokenNode) -> int:
    """The last token of `node`'s sequence (its own, or its nearest ancestor's with tokens)."""
    current = node
    while current is not None and not current.new_tokens:
        current = current.parent
    if current is None:
        raise ValueError("a hypothesis must hold at least one token")
    return current.new_tokens[-1]


def cached_past(cache, node: TokenNode):
    """`node`'s nearest cached ancestor's entry in `cache` (None when nothing is cached) and the tokens
    still to forward after it. A node that is cached itself has its logits wanted again: its entry is
    cut before its last token (`entry.truncated`), which is forwarded once more."""
    pending: list[int] = []
    current = node
    entry = None
    while current is not None:
        entry = cache.get(current)
        if entry is not None:
            break
        pending[:0] = current.new_tokens
        current = current.parent
    if entry is not None and not pending:
        pending = [last_token(node)]
        entry = entry.truncated(entry.length - 1) if entry.length > 1 else None
    if not pending:
        raise ValueError("a hypothesis must hold at least one token")
    return entry, pending
