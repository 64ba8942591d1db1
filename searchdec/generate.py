"""`generate`: one call from a prompt (text or chat messages, or a list of them) to finished text.

Prompts are validated and tokenized before any forward pass; a list of prompts runs as one batch.
With `executor=` (`sd.InProcessExecutor()`, `sd.RayExecutor(...)`), the search's model work and
rewards run as tasks on that executor (searchdec/distributed), with the same seeded results on every
executor; `progress=True` shows a bar of tasks done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from searchdec.distributed.executor import Executor, InProcessExecutor
from searchdec.distributed.work import Job, Work
from searchdec.errors import ConstraintError
from searchdec.grammars import Constraint, ConstraintSpec
from searchdec.grammars.outlines import from_outlines, is_outlines_type
from searchdec.models.model import Model
from searchdec.search.best_of_n import BestOfN
from searchdec.search.decode import Stopping, decode
from searchdec.search.expand import SearchResult, SearchStats
from searchdec.search.mcts import MCTS
from searchdec.search.reward import with_reward
from searchdec.search.reward_guided import RewardGuidedSpeculative
from searchdec.search.sampling import Greedy, Sample
from searchdec.search.speculative import Speculative
from searchdec.search.step_beam import StepBeam
from searchdec.search.trace import Trace
from searchdec.search.tree import Node

_ON_EXECUTORS = (Greedy, Sample, BestOfN, MCTS, StepBeam)
Search = object  # any search spec with `run(model, roots, stopping) -> list[SearchResult]`
Messages = list[dict]
Prompt = str | Messages


@dataclass
class Hypothesis:
    """One finished output: its text, generated token ids (with a final end-of-sequence token, which
    the text leaves out), the log-probability of each token under the model and their sum."""

    text: str
    tokens: list[int]
    token_logprobs: list[float]
    logprob: float
    finish_reason: str  # "stop" | "length"
    score: float | None = None  # the search's ranking score (beam: length-normalised log-probability)


@dataclass
class Generation(Hypothesis):
    """The best hypothesis for one prompt, plus all hypotheses in rank order (`n` of them)."""

    hypotheses: list[Hypothesis] = field(default_factory=list)
    prompt_tokens: int = 0
    trace: Trace | None = None  # the search tree (searches other than Greedy/Sample): .to_json(), .to_html()
    stats: SearchStats | None = None  # expansions, tokens forwarded, reward calls


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
    `search` is `Greedy()` (default), `Sample(...)` or a search (`Beam`, `BestFirstBeam`, `BestOfN`,
    `MCTS`, ...; `reward` fills in the reward of one that needs it). A search's `.hypotheses` are ranked
    by its score, and `.trace` holds its tree. `stop` strings end a hypothesis and are cut from
    its text. `tools` are handed to the chat template. `on_token(prompt_index, node)` is called for
    every new token (the CLI streams with it). `executor` runs Greedy, Sample, BestOfN, MCTS, StepBeam
    and DVTS as tasks (in process or on Ray workers; a list of prompts is spread over the workers);
    `progress` shows a progress bar of those tasks. `MCTS(parallel=K > 1)` always runs as tasks (on
    `sd.InProcessExecutor()` when no executor is given), so its result is the same on any executor.
    """
    search = search or Greedy()
    if not isinstance(search, (Greedy, Sample, RewardGuidedSpeculative)) and not callable(getattr(search, "run", None)):
        raise TypeError(f"search must be a search spec such as sd.Greedy() or sd.Beam(4), got {type(search).__name__}")
    if reward is not None:
        search = with_reward(search, reward)
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise TypeError(f"max_tokens must be an int or None, got {type(max_tokens).__name__}")
    if max_tokens is not None and max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    stops = _stop_strings(stop)
    batched = _is_batch(prompt)
    prompts = list(prompt) if batched else [prompt]
    if not prompts:
        raise ValueError("prompt list is empty")
    owned = None
    if executor is None and isinstance(search, MCTS) and search.parallel > 1:
        executor = owned = InProcessExecutor()  # K leaves a round are a task-level algorithm
    if executor is not None:
        _check_executor(executor, search, constraint, on_token)
    compiled = _compile(model, constraint)
    roots = [Node(tuple(_tokenize(model, p, tools)), state=compiled.start() if compiled else None) for p in prompts]
    for root in roots:
        model.check_prompt_length(len(root.new_tokens))

    budget = model.context_window if max_tokens is None else max_tokens  # None: the window decides
    stopping = Stopping(budget, model.eos_token_ids, stops, model.context_window)
    if executor is not None:
        spec = from_outlines(constraint) if is_outlines_type(constraint) else constraint
        work = Work(executor, model, stopping, spec, jump_forward, progress)
        try:
            if isinstance(search, (Greedy, Sample)):
                results = [
                    _result(model, root, nodes, stops) for root, nodes in zip(roots, _decoded(work, search, roots))
                ]
            else:
                outcomes = search.run(model, roots, stopping, work=work)
                results = [_searched(model, root, outcome, stops) for root, outcome in zip(roots, outcomes)]
        finally:
            work.close()
            if owned is not None:
                owned.close()
        return results if batched else results[0]
    if isinstance(search, RewardGuidedSpeculative):
        results = [search.generation(model, p, budget, stops) for p in prompts]
        for result in results:
            result.hypotheses = [result]
        return results if batched else results[0]
    if isinstance(search, (Greedy, Sample)):
        leaves = decode(model, roots, search, stopping, on_token, jump_forward)
        results = [_result(model, root, nodes, stops) for root, nodes in zip(roots, leaves)]
    elif isinstance(search, Speculative):
        leaves = search.run(model, roots, stopping)
        results = [_result(model, root, nodes, stops) for root, nodes in zip(roots, leaves)]
    else:
        outcomes = search.run(model, roots, stopping)
        results = [_searched(model, root, outcome, stops) for root, outcome in zip(roots, outcomes)]
    return results if batched else results[0]


def _check_executor(executor, search, constraint, on_token) -> None:
    if not isinstance(executor, Executor):
        raise TypeError(
            f"executor must be sd.InProcessExecutor() or sd.RayExecutor(...), got {type(executor).__name__}"
        )
    if not isinstance(search, _ON_EXECUTORS):
        names = ", ".join(cls.__name__ for cls in _ON_EXECUTORS)
        raise ValueError(f"{type(search).__name__} does not run on an executor; searches that do: {names}")
    if isinstance(constraint, Constraint):
        raise ValueError(
            "with an executor, pass the constraint spec (sd.json_schema(...), sd.regex(...), ...), not a compiled "
            "Constraint: each worker compiles it for its own model"
        )
    if on_token is not None:
        raise ValueError("on_token streaming is not available with an executor (tasks return whole outputs)")


def _decoded(work: Work, search: Greedy | Sample, roots: list[Node]) -> list[list[Node]]:
    """Greedy or sampled completions of every root as tasks: sample j of prompt i has seed (seed, i, j)."""
    if isinstance(search, Greedy):
        jobs = [Job(root, root, [None]) for root in roots]
        return [result.rows for result in work.run(jobs)]
    base = work.base_seed(search)
    jobs = [Job(root, root, [work.seed(base, i, j) for j in range(search.n)]) for i, root in enumerate(roots)]
    return [result.rows for result in work.run(jobs, search)]


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


def _tokenize(model: Model, prompt: Prompt, tools: list[dict] | None) -> list[int]:
    if isinstance(prompt, str):
        if tools:
            raise ValueError("tools= needs chat messages: a plain string prompt has no template to put them in")
        tokens = model.encode(prompt)
    elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        for i, message in enumerate(prompt):
            if "role" not in message:
                raise ValueError(f"chat message {i} has no 'role'")
        tokens = model.apply_chat_template(prompt, tools=tools)
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


def _result(model: Model, root: Node, leaves: list[Node], stops: tuple[str, ...]) -> Generation:
    hypotheses = [_hypothesis(model, leaf, stops) for leaf in leaves]
    best = hypotheses[0]
    return Generation(
        best.text,
        best.tokens,
        best.token_logprobs,
        best.logprob,
        best.finish_reason,
        best.score,
        hypotheses=hypotheses,
        prompt_tokens=len(root.new_tokens),
    )


def _searched(model: Model, root: Node, outcome: SearchResult, stops: tuple[str, ...]) -> Generation:
    result = _result(model, root, outcome.leaves, stops)
    for hypothesis, score in zip(result.hypotheses, outcome.scores):
        hypothesis.score = score
    result.score = result.hypotheses[0].score
    result.trace, result.stats = outcome.trace, outcome.stats
    return result


def _hypothesis(model: Model, leaf: Node, stops: tuple[str, ...]) -> Hypothesis:
    tokens, logprobs = leaf.generated()
    visible = tokens[:-1] if tokens and tokens[-1] in model.eos_token_ids else tokens
    text = model.decode(visible)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    return Hypothesis(text, tokens, logprobs, leaf.logprob, leaf.finish_reason or "length")
