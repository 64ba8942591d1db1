"""One choice's output as it arrives: text held back while a stop string or a UTF-8 character may be
incomplete, tool calls read back out of the text (whole, or as OpenAI's streamed deltas), and
log-probabilities in OpenAI's two shapes (chat and legacy completions).

Streamed tool calls: once a call's `"name"` is complete, a delta carries its `index`, `id`, `type`
and name with the arguments so far; later deltas carry only `index` and the next piece of the
arguments text. The grammar guarantees what the scanner relies on: a call object's `"name"` comes
first, then `"arguments"`, and a plain answer never begins like a call.
"""

from __future__ import annotations

import json
import re
import uuid

from searchdec.grammars import ToolCalls
from searchdec.server.engine import TokenLogprob

_CALL_HEAD = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


# searchdec's finish reasons that OpenAI does not define, as the OpenAI value a client acts on. "unsatisfied"
# (a check beyond the grammar, e.g. SQL that must compile or uniqueItems, could not be met within the search's
# backtracking budget) is answered as "length": like a cut output, the text is not a valid answer, and strict
# clients (typed SDKs) know only OpenAI's values. The exact reason rides beside it in `finish_detail`.
_OPENAI_FINISH = {"unsatisfied": "length"}


def openai_finish(reason: str | None) -> dict:
    """`{"finish_reason": ...}` in OpenAI's values, plus `"finish_detail"` when searchdec's reason differs."""
    if reason in _OPENAI_FINISH:
        return {"finish_reason": _OPENAI_FINISH[reason], "finish_detail": reason}
    return {"finish_reason": reason}


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def scan_calls(text: str) -> list[tuple[str, str]]:
    """(name, arguments text so far) of each call begun in `text`, in order; the last may be partial."""
    calls = []
    pos = 0
    while match := _CALL_HEAD.search(text, pos):
        name = json.loads(f'"{match.group(1)}"')
        end = _value_end(text, match.end())
        calls.append((name, text[match.end() : end]))
        if end is None:
            break
        pos = end
    return calls


def _value_end(text: str, start: int) -> int | None:
    """Where the JSON value starting at `start` ends (exclusive), or None if it is not complete yet."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if depth == 0:
                    return i + 1
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            if depth == 0:
                return i  # a scalar value ended by its enclosing object
            depth -= 1
            if depth == 0:
                return i + 1
        elif depth == 0 and ch == ",":
            return i
    return None


class ChoiceOutput:
    """Accumulates one choice's tokens; `delta()` gives what can be streamed now, `final()` the end."""

    def __init__(self, model, stops: tuple[str, ...], tools: ToolCalls | None, logprobs: bool) -> None:
        self.model = model
        self.stops = stops
        self.tools = tools
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if logprobs else None
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.sent_text = 0
        self.sent_calls: list[tuple[str, int]] = []  # (id, arguments characters sent)
        self._hold = max((len(s) for s in stops), default=1) - 1
        self.mode = None if tools is not None and tools.choice == "auto" else ("calls" if tools else "text")
        if tools is not None and tools.choice == "none":
            self.mode = "text"

    def add(self, tokens: list[int], logprobs: list[TokenLogprob] | None) -> None:
        self.tokens.extend(tokens)
        if self.logprobs is not None and logprobs:
            self.logprobs.extend(lp for lp in logprobs if lp.token not in self.model.eos_token_ids)

    def finish(self, reason: str, tokens: int) -> None:
        self.finish_reason = reason
        self.completion_tokens = tokens

    @property
    def text(self) -> str:
        """The text so far (end-of-sequence left out), cut at the first stop string."""
        visible = [t for t in self.tokens if t not in self.model.eos_token_ids]
        text = self.model.decode(visible)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        return text[:cut] if cut >= 0 else text

    # --- whole responses ------------------------------------------------------------------

    def calls(self) -> list[dict] | None:
        """The tool calls of a finished output ([{"name", "arguments"}]), or None for a plain answer.
        An output cut by max_tokens, or by a stop string inside a call, is never presented as calls
        (it comes back as content, finish_reason "length" or "stop", as the cut happened)."""
        if self.tools is None or self.tools.choice == "none" or self.finish_reason != "stop":
            return None
        text = self.text
        if self.tools.choice == "auto" and not text.lstrip().startswith(self.tools.call_start):
            return None  # the grammar's plain-answer branch, which never begins like a call
        try:
            return self.tools.parse(text)
        except ValueError:  # the request's stop string cut a call short
            return None

    def chat_finish_reason(self, named: bool) -> str:
        if self.calls():
            return "stop" if named else "tool_calls"
        return self.finish_reason or "length"

    def finish_fields(self, named: bool | None = None) -> dict:
        """A choice's `finish_reason` in OpenAI's values (chat when `named` is given, else completions), with
        searchdec's own reason beside it in `finish_detail` where OpenAI has none (see `openai_finish`)."""
        reason = self.chat_finish_reason(named) if named is not None else self.finish_reason or "length"
        return openai_finish(reason)

    def chat_message(self) -> dict:
        calls = self.calls()
        if calls:
            tool_calls = [
                {
                    "id": call_id(),
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)},
                }
                for c in calls
            ]
            return {"role": "assistant", "content": None, "refusal": None, "tool_calls": tool_calls}
        return {"role": "assistant", "content": self.text, "refusal": None}

    # --- streaming ------------------------------------------------------------------------

    def delta(self, final: bool = False) -> dict:
        """What can be sent now: {"content": ...} and/or {"tool_calls": [...]} (empty when nothing)."""
        text = self.text
        if not final and text.endswith("\ufffd"):
            return {}
        if self.mode is None:
            if not text.strip() and not final:
                return {}
            # As the grammar branches: a plain answer never begins like a call.
            self.mode = "calls" if text.lstrip().startswith(self.tools.call_start) else "text"
        if self.mode == "text":
            end = len(text) if final else max(len(text) - self._hold, self.sent_text)
            piece = text[self.sent_text : end]
            self.sent_text = end
            return {"content": piece} if piece else {}
        deltas = []
        for index, (name, arguments) in enumerate(scan_calls(text)):
            if index >= len(self.sent_calls):
                identifier = call_id()
                deltas.append(
                    {
                        "index": index,
                        "id": identifier,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                )
                self.sent_calls.append((identifier, len(arguments)))
            elif len(arguments) > self.sent_calls[index][1]:
                deltas.append({"index": index, "function": {"arguments": arguments[self.sent_calls[index][1] :]}})
                self.sent_calls[index] = (self.sent_calls[index][0], len(arguments))
        return {"tool_calls": deltas} if deltas else {}

    def take_logprobs(self) -> list[TokenLogprob]:
        """Log-probability entries not yet streamed."""
        if not self.logprobs:
            return []
        taken, self.logprobs = self.logprobs, []
        return taken


def _token_text(model, token: int) -> tuple[str, list[int]]:
    raw = model.vocab_bytes[token] if token < len(model.vocab_bytes) else b""
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(model, entries: list[TokenLogprob]) -> dict:
    content = []
    for entry in entries:
        text, raw = _token_text(model, entry.token)
        top = []
        for token, logprob in entry.top:
            t, b = _token_text(model, token)
            top.append({"token": t, "logprob": logprob, "bytes": b})
        content.append({"token": text, "logprob": entry.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": content, "refusal": None}


def completion_logprobs(model, entries: list[TokenLogprob], offset: int = 0) -> dict:
    tokens, logprobs, tops, offsets = [], [], [], []
    for entry in entries:
        text, _ = _token_text(model, entry.token)
        tokens.append(text)
        logprobs.append(entry.logprob)
        tops.append({_token_text(model, t)[0]: lp for t, lp in entry.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}
