"""`generate`: one call from a prompt (text or chat messages, or a list of them) to finished text.

Prompts are validated and tokenized before any forward pass; a list of prompts runs as one batch.
With `executor=` (`sd.InProcessExecutor()`, `sd.RayExecutor(...)`), the search's model work and
rewards run as tasks on that executor (searchdec/distributed), with the same seeded results on every
executor; `progress=True` shows a bar of tasks done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from searchdec.errors import ConstraintError
from searchdec.grammars import Constraint, ConstraintSpec, ToolCalls
from searchdec.grammars.outlines import from_outlines, is_outlines_type
from searchdec.models.model import Model
from searchdec.requests import chat_prompt
from searchdec.search.base import Search, SearchResult
from searchdec.search.processors import check_search
from searchdec.search.results import Generation, Hypothesis
from searchdec.search.rows import Stopping
from searchdec.search.sampling import Greedy, Sample
from searchdec.search.tree import Node
from searchdec.search.work import Executor, Work

Messages = list[dict]
Prompt = str | Messages


def generate(
    model: Model,
    prompt: Prompt | Sequence[Prompt],
    *,
    max_tokens: int | None = 256,
    search: Greedy | Sample | Search | None = None,
    stop: str | Sequence[str] | None = None,
    tools: list[dict] | None = None,
    constraint: ConstraintSpec | Constraint | None = None,
    jump_forward: bool = True,
    on_token: Callable[[int, Node], None] | None = None,
    reward: Callable[[str, str], float] | None = None,
    executor: Executor | None = None,
    progress: bool = False,
) -> Generation | list[Generation]:
    """Generate from `prompt` (a string, chat messages, or a list of either: then a list comes back).

    `constraint` (`sd.json_schema`, `sd.regex`, `sd.choice`, `sd.lark`, `sd.sql`, `sd.tool_calls`, an
    `outlines.types` object, or a compiled Constraint) is
    compiled before anything runs; every hypothesis that finishes with "stop" satisfies it, and one
    cut by `max_tokens` finishes with "length". With `jump_forward`, text the grammar fixes is appended
    without a forward pass of its own (its log-probabilities come from the next forward).
    `max_tokens=None` generates until the end-of-sequence token or the context window.
    `search` is any search spec (`Greedy()`, the default, `Sample(...)`, `Beam`, `BestFirstBeam`,
    `BestOfN`, `MCTS`, ...; `reward` fills in the reward of one that needs it), run by its one `run`.
    A search's `.hypotheses` are ranked
    by its score, and `.trace` holds its tree. `stop` strings end a hypothesis and are cut from
    its text. `tools` (OpenAI's list) reach the model as the server renders them (`sd.chat_prompt`): to
    a chat template that renders tools, else described in the system message in the call format of an
    `sd.tool_calls` constraint (the model's own format without one; `sd.constraint_for(model, tools=...)`
    builds the server's constraint). `on_token(prompt_index, node)` is called for
    every new token (the CLI streams with it). Sampling searches run their model work as seeded tasks on
    `executor` (none given: in this process), so a seed gives the same result with no executor,
    `sd.InProcessExecutor()` or `sd.RayExecutor(...)` (a list of prompts is spread over the workers);
    `progress` shows a progress bar of those tasks.
    """
    search = search or Greedy()
    if not isinstance(search, Search):
        raise TypeError(f"search must be a search spec such as sd.Greedy() or sd.Beam(4), got {type(search).__name__}")
    if reward is not None:
        search = _with_reward(search, reward)
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise TypeError(f"max_tokens must be an int or None, got {type(max_tokens).__name__}")
    if max_tokens is not None and max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    stops = _stop_strings(stop)
    batched = _is_batch(prompt)
    prompts = list(prompt) if batched else [prompt]
    if not prompts:
        raise ValueError("prompt list is empty")
    if executor is not None:
        _check_executor(executor, search, constraint)
    check_search(search, model.vocab_size)  # a logit_bias token id outside the vocabulary
    compiled = _compile(model, constraint)
    roots = [
        Node(tuple(_tokenize(model, p, tools, constraint)), state=compiled.start() if compiled else None, prompt=p)
        for p in prompts
    ]
    for root in roots:
        model.check_prompt_length(len(root.new_tokens))

    budget = model.context_window if max_tokens is None else max_tokens  # None: the window decides
    if compiled is not None:
        compiled.check_budget(budget)  # e.g. sd.includes: do the phrases fit?
    stopping = Stopping(budget, model.eos_token_ids, stops, model.context_window)
    # Tasks compile the spec where they run; in this process a compiled constraint is used as it is.
    spec = compiled if executor is None else _spec(constraint)
    with Work(
        model, stopping, spec, executor=executor, jump_forward=jump_forward, progress=progress, on_token=on_token
    ) as work:
        outcomes = search.run(work, roots)
    results = [_searched(model, root, outcome, stops) for root, outcome in zip(roots, outcomes)]
    return results if batched else results[0]


def _with_reward(search, reward):
    """`search` with `reward` filled in where it takes one and has none yet."""
    fields = {f.name for f in dataclasses.fields(search)} if dataclasses.is_dataclass(search) else set()
    if "reward" not in fields:
        raise TypeError(f"{type(search).__name__} does not use a reward; drop reward= or pick a reward-driven search")
    return search if search.reward is not None else dataclasses.replace(search, reward=reward)


def _spec(constraint):
    return from_outlines(constraint) if is_outlines_type(constraint) else constraint


def _check_executor(executor, search, constraint) -> None:
    if not isinstance(executor, Executor):
        raise TypeError(
            f"executor must be sd.InProcessExecutor() or sd.RayExecutor(...), got {type(executor).__name__}"
        )
    if not getattr(search, "distributable", False):
        raise ValueError(
            f"{type(search).__name__} does not run on an executor; searches that do: Greedy, Sample, BestOfN, "
            "FirstFinish, MCTS, StepBeam, DVTS"
        )
    if isinstance(constraint, Constraint):
        raise ValueError(
            "with an executor, pass the constraint spec (sd.json_schema(...), sd.regex(...), ...), not a "
            "compiled Constraint: each worker compiles it for its own model"
        )


def _compile(model: Model, constraint) -> Constraint | None:
    if constraint is None:
        return None
    if isinstance(constraint, Constraint):  # either backend; it must fit this model's logits
        if constraint.vocab_size != model.vocab_size:
            raise ConstraintError(
                f"the constraint was compiled for a vocabulary of {constraint.vocab_size} tokens, this model has "
                f"{model.vocab_size}: pass the spec, or compile it with spec.compile(model)"
            )
        return constraint
    if isinstance(constraint, ConstraintSpec):
        return constraint.compile(model)
    if is_outlines_type(constraint):
        return from_outlines(constraint).compile(model)
    raise TypeError(
        "constraint must be sd.json_schema(...), sd.regex(...), sd.choice(...), sd.lark(...), an outlines.types "
        f"object or a compiled Constraint; got {type(constraint).__name__}"
    )


def _is_batch(prompt) -> bool:
    if isinstance(prompt, str):
        return False
    if isinstance(prompt, Sequence) and prompt and isinstance(prompt[0], dict):
        return False  # one chat conversation
    if isinstance(prompt, Sequence):
        return True
    raise TypeError(f"prompt must be a string, chat messages, or a list of those; got {type(prompt).__name__}")


def _tokenize(model: Model, prompt: Prompt, tools: list[dict] | None, constraint=None) -> list[int]:
    if isinstance(prompt, str):
        if tools:
            raise ValueError("tools= needs chat messages: a plain string prompt has no template to put them in")
        tokens = model.encode(prompt)
    elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        # As the server renders them; a tool-call constraint's format is the one the prompt describes.
        tool_format = constraint.format if isinstance(constraint, ToolCalls) else "auto"
        tokens = chat_prompt(model, prompt, tools, tool_format=tool_format)
    else:
        raise TypeError(f"each prompt must be a string or a list of chat messages; got {type(prompt).__name__}")
    if not tokens:
        raise ValueError("prompt is empty: it encodes to no tokens")
    return tokens


def _stop_strings(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
    return stops


def _searched(model: Model, root: Node, outcome: SearchResult, stops: tuple[str, ...]) -> Generation:
    hypotheses = [_hypothesis(model, leaf, stops) for leaf in outcome.leaves]
    for hypothesis, score in zip(hypotheses, outcome.scores):
        hypothesis.score = score
    for hypothesis, weight in zip(hypotheses, outcome.weights or ()):
        hypothesis.weight = weight
    best = hypotheses[0]
    return Generation(
        best.text,
        best.tokens,
        best.token_logprobs,
        best.logprob,
        best.finish_reason,
        best.score,
        best.weight,
        hypotheses=hypotheses,
        prompt_tokens=len(root.new_tokens),
        trace=outcome.trace,
        stats=outcome.stats,
    )


def _hypothesis(model: Model, leaf: Node, stops: tuple[str, ...]) -> Hypothesis:
    tokens, logprobs = leaf.generated()
    visible = tokens[:-1] if tokens and tokens[-1] in model.eos_token_ids else tokens
    text = model.decode(visible)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    return Hypothesis(text, tokens, logprobs, leaf.logprob, leaf.finish_reason or "length")
