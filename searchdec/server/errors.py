"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with its status codes."""

from __future__ import annotations

from searchdec.errors import (
    ConstraintError,
    EmptyLanguageError,
    GrammarSyntaxError,
    PromptTooLongError,
    SchemaError,
    UnsupportedKeywordError,
)


class APIError(Exception):
    """An error answered to the client; `status` is the HTTP status."""

    def __init__(
        self, message: str, status: int = 400, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(message, 400, "invalid_request_error", param, code)


def from_constraint_error(error: ConstraintError, param: str) -> APIError:
    """A grammar-layer error (raised while compiling a request's constraint) as a 400 naming the field."""
    if isinstance(error, SchemaError):
        code = "invalid_schema"
    elif isinstance(error, UnsupportedKeywordError):
        code = "unsupported_schema_keyword"
    elif isinstance(error, GrammarSyntaxError):
        code = "invalid_grammar"
    elif isinstance(error, EmptyLanguageError):
        code = "empty_constraint"
    else:
        code = "invalid_constraint"
    return bad_request(f"{param}: {error}", param, code)


def context_overflow(error: PromptTooLongError | str, param: str = "messages") -> APIError:
    return bad_request(str(error), param, "context_length_exceeded")
