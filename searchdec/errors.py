"""Errors searchdec raises, each naming its cause: bad input before any generation starts, and the
executor's own failures (a cluster that cannot place its workers, every worker lost)."""

from __future__ import annotations


class SearchdecError(Exception):
    """Base class of searchdec's own errors."""


class ModelNotFoundError(SearchdecError, LookupError):
    """A model name that is neither an alias, a local path, nor a model available locally."""


class ModelLoadError(SearchdecError, ValueError):
    """A model file that exists but cannot be loaded (for instance a corrupt GGUF)."""


class PromptTooLongError(SearchdecError, ValueError):
    """A prompt that does not fit in the model's context window."""


class ConstraintError(SearchdecError, ValueError):
    """A constraint that cannot be compiled; raised at compile time, before any generation."""


class SchemaError(ConstraintError):
    """A JSON Schema that is not valid JSON Schema; `pointer` locates the offending part."""

    def __init__(self, message: str, pointer: str = "") -> None:
        super().__init__(f"invalid JSON Schema at {pointer or '/'}: {message}")
        self.pointer = pointer


class UnsupportedKeywordError(ConstraintError):
    """A JSON Schema keyword the grammar engine cannot enforce (pass lenient=True to ignore it)."""

    def __init__(self, keywords: list[str], detail: str = "") -> None:
        names = ", ".join(keywords)
        super().__init__(
            f"unsupported JSON Schema keyword(s): {names}; they cannot be enforced, so the schema is refused "
            f"(pass lenient=True to ignore them){': ' + detail if detail else ''}"
        )
        self.keywords = keywords


class GrammarSyntaxError(ConstraintError):
    """A grammar or regex that does not parse; the message names the rule and position."""


class EmptyLanguageError(ConstraintError):
    """A constraint that no output can satisfy."""


class DatabaseNotFoundError(ConstraintError):
    """A database path that names no file, or a file SQLite cannot read."""


class ExecutorError(SearchdecError, RuntimeError):
    """An executor that cannot do its work (for instance a cluster that cannot place its workers)."""


class WorkersLostError(ExecutorError):
    """Every worker of a distributed executor is gone (dead or never started): nothing is left to retry on."""
