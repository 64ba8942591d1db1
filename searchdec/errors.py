"""Errors searchdec raises before any generation starts, each naming its cause."""

from __future__ import annotations


class SearchdecError(Exception):
    """Base class of searchdec's own errors."""


class ModelNotFoundError(SearchdecError, LookupError):
    """A model name that is neither an alias, a local path, nor a model available locally."""


class ModelLoadError(SearchdecError, ValueError):
    """A model file that exists but cannot be loaded (for instance a corrupt GGUF)."""


class PromptTooLongError(SearchdecError, ValueError):
    """A prompt that does not fit in the model's context window."""
