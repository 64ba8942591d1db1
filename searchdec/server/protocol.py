"""Request bodies of the OpenAI-compatible API, as Pydantic models (they also make the OpenAPI schema).

Every field OpenAI defines for these endpoints is declared; one that searchdec cannot honour is
refused when set to anything but its neutral value (see `app._refuse_unsupported`), and a field
nobody defines is a 400, as OpenAI itself answers. searchdec's own extensions: `search`,
`structured_outputs` (with `sql`), the legacy `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar`,
`top_k` / `min_p`, and transformers' logit processors `repetition_penalty`, `no_repeat_ngram_size`,
`typical_p`, `epsilon_cutoff`, `eta_cutoff` (search/processors.py; OpenAI's `frequency_penalty`,
`presence_penalty` and `logit_bias` map onto the same pipeline).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url", "input_audio", "file", "refusal"]
    image_url: dict | None = None
    input_audio: dict | None = None
    file: dict | None = None
    refusal: str | None = None


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # What the openai client echoes back when a previous response message is reused as history.
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: Any | None = None
    function_call: Any | None = None


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class SqlOutputs(_Strict):
    """SQLite SELECT statements over a schema: a Spider `tables.json` entry, or the name of a database the
    server was started with (`searchdec serve --database NAME=PATH`); `checks` as in `sd.sql`."""

    tables: dict[str, Any] | None = None
    database: str | None = None
    checks: StrictBool = True


class StructuredOutputs(_Strict):
    """searchdec's constraint extension (vLLM's names, and `sql`): exactly one of these."""

    json_: dict[str, Any] | StrictBool | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    sql: SqlOutputs | None = None


class SearchSpec(BaseModel):
    """searchdec's search extension: `{"algorithm": "beam", "width": 4, ...}`; the algorithm's own
    parameters sit beside its name and are checked by the algorithm's entry (searchdec/server/searches.py)."""

    model_config = ConfigDict(extra="allow")
    algorithm: str = Field(description="greedy, sample, beam, diverse_beam, best_first_beam or best_of_n")


Stop = str | list[str] | None


class _Sampling(_Strict):
    model: str
    n: int = Field(default=1, ge=1, le=128)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: Stop = None
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    repetition_penalty: float | None = Field(default=None, gt=0)
    no_repeat_ngram_size: int | None = Field(default=None, ge=0)
    typical_p: float | None = Field(default=None, gt=0, le=1)
    epsilon_cutoff: float | None = Field(default=None, ge=0, lt=1)
    eta_cutoff: float | None = Field(default=None, ge=0, lt=1)
    user: str | None = None
    search: SearchSpec | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | StrictBool | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # Declared by OpenAI; accepted as metadata with no effect on the output.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # Declared by OpenAI; refused unless left at their neutral value.
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=128)
