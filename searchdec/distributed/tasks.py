"""Work units: the serializable, deterministic tasks an executor runs, and `TaskRunner`, which runs
them on one model (in this process, or inside a Ray actor that loaded the model itself).

A `Task` names everything its result depends on: the prompt's token ids, the tokens already
generated (`prefix`), the constraint spec (compiled where the task runs), the sampling warpers, the
stopping rule, one explicit seed per row (None: greedy), what to do (report the `top` allowed next
tokens of the start; extend each row by one step or to the end) and the torch thread count. Its
result (`TaskResult`) holds tokens, their log-probabilities and finish reasons — plain lists.

Why results do not depend on where a task runs: the runner computes a task by one fixed procedure.
(1) The prompt is forwarded alone, in a batch of one, and its KV entry and next-token logits are
kept (keyed by the prompt's tokens) for later tasks of the same prompt — so a cached prompt and a
freshly computed one hold bit-identical values, and prefix-affinity routing only saves work.
(2) The prefix is forwarded on top of that entry; the task's rows are then decoded together, the
task alone forming every batch (batched padded forwards differ from single ones in the last bits,
enough to flip a sample, so no other task ever shares a forward). (3) Row i draws from its own
generator seeded with its own seed, so its draws depend on nothing else. (4) CPU matrix products
split their reductions by thread, so each task runs under `threads` torch threads. Any executor
running the same tasks therefore returns the same results, whichever worker ran each one, as long
as the workers' models match (same weights, dtype and device type: GPU kernels and generators differ
from CPU ones).

Decoding a row follows `search/decode.py`: logits are masked by the row's constraint state,
jump-forward appends forced text, the budget check keeps a constrained row closable, reported
log-probabilities are those of the unmasked model, and a row finishes with "stop" or "length" by the
same rule. A row in step mode also ends, unfinished, after the first match of the step delimiter in
its own text, or after `max_step_tokens`.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from searchdec.search import budget
from searchdec.search.decode import (
    Stopping,
    _constrained,
    _fill_forced_logprobs,
    _finished,
    _forward,
    _StopText,
    extend_closable,
)
from searchdec.search.sampling import Greedy, Sample
from searchdec.search.tree import Node


def task_seed(base: int, *keys: object) -> int:
    """A 63-bit seed mixed from a search's seed and a task's place in it (prompt, simulation, row):
    stable across processes and Python versions, unlike `hash`."""
    digest = hashlib.blake2b(repr((base, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Task:
    """One unit of model work: forward `prompt + prefix`, then report and/or extend (see module docstring)."""

    id: int
    prompt: tuple[int, ...]
    prefix: tuple[int, ...]
    stopping: Stopping
    seeds: tuple[int | None, ...] = ()  # one row per seed; None: a greedy row
    sample: Sample | None = None  # the warpers of sampled rows (its own seed is not used)
    constraint: object = None  # a ConstraintSpec, compiled where the task runs
    top: int = 0  # report the `top` most probable allowed next tokens after the prefix
    to_end: bool = True  # rows run until they finish; else they stop after one step
    step: re.Pattern | None = None  # the step delimiter (None with to_end=False: one token)
    max_step_tokens: int | None = None
    jump_forward: bool = True
    threads: int = 1

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("a task needs a non-empty prompt")
        if any(seed is not None for seed in self.seeds) and self.sample is None:
            raise ValueError("a task with seeded rows needs sample= (the sampling warpers)")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclass
class Completion:
    """One row's outcome: the tokens it appended after the prefix, their log-probabilities, and why
    it ended ("stop", "length", or None: a step ended, the hypothesis did not)."""

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str | None


@dataclass
class TaskResult:
    id: int
    rows: list[Completion] = field(default_factory=list)
    top: list[tuple[int, float]] = field(default_factory=list)  # (token, log-probability), best first
    tokens_forwarded: int = 0
    worker: str = ""
    seconds: float = 0.0  # time the runner spent on the task


class TaskRunner:
    """Runs tasks on one model, keeping the prompts it has seen (KV entry and logits) for later tasks.

    Tasks run one at a time (a runner belongs to one executor thread or one actor); a kept prompt's
    root node is reused across tasks, its constraint state set per task."""

    def __init__(self, model, prompts: int = 64, name: str = "in-process") -> None:
        self.model = model
        self.name = name
        self.capacity = prompts
        self._roots: OrderedDict[tuple[int, ...], tuple[Node, torch.Tensor]] = OrderedDict()

    def run(self, task: Task) -> TaskResult:
        with _threads(task.threads):
            before, start = self.model.stats.tokens, time.perf_counter()
            result = self._run(task)
            result.seconds = time.perf_counter() - start
            result.tokens_forwarded = self.model.stats.tokens - before
            result.worker = self.name
            return result

    def release(self) -> None:
        """Drop every kept prompt's cache entry."""
        for root, _ in self._roots.values():
            self.model.cache.discard(root)
        self._roots.clear()

    def _root(self, prompt: tuple[int, ...]) -> tuple[Node, torch.Tensor]:
        kept = self._roots.get(prompt)
        if kept is not None and kept[0] in self.model.cache:
            self._roots.move_to_end(prompt)
            return kept
        if kept is not None:  # its entry was evicted: recompute it exactly as the first time
            self._roots.pop(prompt)
        self.model.check_prompt_length(len(prompt))
        root = Node(prompt)
        logits = self.model.logits([root])[0].clone()
        self._roots[prompt] = (root, logits)
        while len(self._roots) > self.capacity:
            old, _ = self._roots.popitem(last=False)[1]
            self.model.cache.discard(old)
        return root, logits

    def _run(self, task: Task) -> TaskResult:
        model, stopping = self.model, task.stopping
        root, root_logits = self._root(task.prompt)
        constraint = task.constraint.compile(model) if task.constraint is not None else None
        root.state = constraint.start() if constraint is not None else None
        root.closing = 0
        start = root
        if task.prefix:
            state = root.state.advance_many(list(task.prefix)) if root.state is not None else None
            start = Node(task.prefix, root, (0.0,) * len(task.prefix), state=state)
        if start.state is not None:
            room = None if stopping.context_window is None else stopping.context_window - len(task.prompt)
            budget.start(start, stopping.max_tokens, room)
        logits = root_logits.unsqueeze(0).clone() if start is root else model.logits([start])
        result = TaskResult(task.id)
        logprobs = logits.log_softmax(dim=-1)
        masked = _constrained(logits, [start])
        if task.top:
            allowed = logprobs.masked_fill(masked == float("-inf"), float("-inf"))[0]
            values, tokens = torch.topk(allowed, min(task.top, allowed.numel()))
            result.top = [(int(t), float(v)) for v, t in zip(values.tolist(), tokens.tolist()) if v != float("-inf")]
        if task.seeds:
            leaves = self._rows(task, start, logprobs[0], masked[0])
            result.rows = [_completion(leaf, start) for leaf in leaves]
        if start is not root:
            model.cache.discard(start)
        return result

    def _rows(self, task: Task, start: Node, logprobs: torch.Tensor, masked: torch.Tensor) -> list[Node]:
        """Each row's last node, decoded from `start` whose next-token log-probabilities are given."""
        model, stopping = self.model, task.stopping
        prompt_length = len(task.prompt)
        texts = _StopText(model, stopping.stop)
        policies = [(Greedy(), None) if seed is None else (task.sample, _generator(seed, model)) for seed in task.seeds]
        leaves: list[Node | None] = [None] * len(task.seeds)
        if stopping.max_tokens - start.depth <= 0:
            for i in range(len(task.seeds)):
                leaves[i] = start.child((), ())
                leaves[i].finish_reason = "length"
            return leaves  # type: ignore[return-value]

        def choose(policy, generator, row: torch.Tensor) -> int:
            if isinstance(policy, Greedy):
                return int(row.argmax())
            return int(policy.draw(row.unsqueeze(0), generator, 1)[0, 0])

        def grow(i: int, node: Node, row_logprobs: torch.Tensor, row_masked: torch.Tensor) -> Node:
            policy, generator = policies[i]
            token = choose(policy, generator, row_masked)
            return extend_closable(
                node, token, row_logprobs, row_masked, policy, generator, stopping, prompt_length, task.jump_forward
            )

        active = [(i, grow(i, start, logprobs, masked)) for i in range(len(task.seeds))]
        while True:
            still = []
            for i, node in active:
                reason = _finished(node, stopping, prompt_length, texts)
                if reason is not None:
                    node.finish_reason = reason
                elif not task.to_end and _step_ended(model, task, node, start):
                    pass
                else:
                    still.append((i, node))
                    continue
                leaves[i] = node
                if node.parent is not start and not node.forced:
                    model.cache.discard(node.parent)
            if not still:
                break
            nodes = [node for _, node in still]
            logits = _forward(model, nodes)
            step_logprobs = logits.log_softmax(dim=-1)
            step_masked = _constrained(logits, nodes)
            active = []
            for row, (i, node) in enumerate(still):
                if node.parent is not start:
                    model.cache.discard(node.parent)
                active.append((i, grow(i, node, step_logprobs[row], step_masked[row])))
        done = [leaf for leaf in leaves if leaf is not None]
        _fill_forced_logprobs(model, [leaf for leaf in done if leaf.forced])
        for leaf in done:
            model.cache.discard(leaf)
            if leaf.parent is not start:
                model.cache.discard(leaf.parent)
        return done


def _step_ended(model, task: Task, node: Node, start: Node) -> bool:
    if task.step is None:
        return True  # token steps
    tokens, _ = _since(node, start)
    if task.max_step_tokens is not None and len(tokens) >= task.max_step_tokens:
        return True
    return task.step.search(model.decode(tokens)) is not None


def _since(node: Node, start: Node) -> tuple[list[int], list[float]]:
    tokens: list[int] = []
    logprobs: list[float] = []
    current = node
    while current is not None and current is not start:
        tokens[:0] = current.new_tokens
        logprobs[:0] = current.token_logprobs
        current = current.parent
    return tokens, logprobs


def _completion(leaf: Node, start: Node) -> Completion:
    tokens, logprobs = _since(leaf, start)
    return Completion(tuple(tokens), tuple(float(v) for v in logprobs), leaf.finish_reason)


def _generator(seed: int, model) -> torch.Generator:
    generator = torch.Generator(device=model.device)
    generator.manual_seed(seed)
    return generator


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
