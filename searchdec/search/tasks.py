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
(2) The prefix is forwarded on top of that entry chunk by chunk (`chunks`: the lengths of the search
tree's nodes on the path to the start, so each node of the tree is one chunk), each chunk alone, in
a batch of one, on top of the one before; each chunk's entry and logits are kept too (keyed by the
prompt and the prefix up to it), so a later task starting at a node or below it forwards only the
chunks not yet kept — and a kept chunk holds bit-identical values to a fresh one, whatever ran
before. The task's rows are then decoded together, the task alone forming every batch (batched
padded forwards differ from single ones in the last bits, enough to flip a sample, so no other task
ever shares a forward). (3) Row i draws from its own
generator seeded with its own seed, so its draws depend on nothing else. (4) CPU matrix products
split their reductions by thread, so each task runs under `threads` torch threads. Any executor
running the same tasks therefore returns the same results, whichever worker ran each one, as long
as the workers' models match (same weights, dtype and device type: GPU kernels and generators differ
from CPU ones).

Rows are decoded by the one decoding step (`search/rows.py`), the same as every other driver; a row
in step mode ends, unfinished, after the first match of the step delimiter in its own text, or after
`max_step_tokens`; with `first`, the rows stop once that many have finished (first-finish search).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from searchdec.grammars import Constraint
from searchdec.search.rows import Decoder, Row, Rule, Stopping, constrain, decode_rows, generator, start_budget
from searchdec.search.tree import Node

if TYPE_CHECKING:
    from searchdec.search.sampling import Sample


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
    first: int | None = None  # stop the rows once this many have finished with "stop" (first-finish)
    chunks: tuple[int, ...] = ()  # lengths of the prefix's chunks (the tree's nodes); () is one chunk

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("a task needs a non-empty prompt")
        if any(seed is not None for seed in self.seeds) and self.sample is None:
            raise ValueError("a task with seeded rows needs sample= (the sampling warpers)")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.chunks and (sum(self.chunks) != len(self.prefix) or min(self.chunks) < 1):
            raise ValueError(f"chunks {self.chunks} do not cut a prefix of {len(self.prefix)} tokens")

    def ends(self) -> list[int]:
        """Where each chunk of the prefix ends."""
        ends, total = [], 0
        for length in self.chunks or ((len(self.prefix),) if self.prefix else ()):
            total += length
            ends.append(total)
        return ends


@dataclass
class Completion:
    """One row's outcome: the tokens it appended after the prefix, their log-probabilities, and why
    it ended ("stop", "length", or None: a step ended, the hypothesis did not)."""

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str | None
    backtracks: int = 0  # choices made again after a check killed the row (search/rows.py)


@dataclass
class TaskResult:
    id: int
    rows: list[Completion] = field(default_factory=list)
    top: list[tuple[int, float]] = field(default_factory=list)  # (token, log-probability), best first
    tokens_forwarded: int = 0
    expansions: int = 0  # nodes forwarded for the task (kept prompt and chunks are not counted again)
    backtracks: int = 0  # choices made again after a check killed a row (search/rows.py)
    worker: str = ""
    seconds: float = 0.0  # time the runner spent on the task


class TaskRunner:
    """Runs tasks on one model, keeping the prompts and prefix chunks it has seen (KV entry and
    logits) for later tasks.

    Tasks run one at a time (a runner belongs to one executor thread or one actor); a kept node is
    reused across tasks, the start's constraint state set per task."""

    def __init__(self, model, prompts: int = 64, name: str = "in-process", prefixes: int = 1024) -> None:
        self.model = model
        self.name = name
        self.capacity = prompts
        self.prefix_capacity = prefixes
        self._roots: OrderedDict[tuple[int, ...], tuple[Node, torch.Tensor]] = OrderedDict()
        self._chunks: OrderedDict[tuple[tuple[int, ...], tuple[int, ...]], tuple[Node, torch.Tensor]] = OrderedDict()
        self._forwarded = 0

    def run(self, task: Task, on_token=None) -> TaskResult:
        """The task's result; `on_token(row)` is called after each token of its rows (in process only)."""
        with _threads(task.threads):
            before, start = self.model.stats.tokens, time.perf_counter()
            self._forwarded = 0
            result = self._run(task, on_token)
            result.seconds = time.perf_counter() - start
            result.tokens_forwarded = self.model.stats.tokens - before
            result.expansions += self._forwarded
            result.worker = self.name
            return result

    def release(self) -> None:
        """Drop every kept prompt's and chunk's cache entry."""
        for node, _ in [*self._roots.values(), *self._chunks.values()]:
            self.model.cache.discard(node)
        self._roots.clear()
        self._chunks.clear()

    def _root(self, prompt: tuple[int, ...]) -> tuple[Node, torch.Tensor]:
        kept = self._roots.get(prompt)
        if kept is not None and kept[0] in self.model.cache:
            self._roots.move_to_end(prompt)
            return kept
        if kept is not None:  # its entry was evicted: recompute it exactly as the first time
            self._roots.pop(prompt)
        self.model.check_prompt_length(len(prompt))
        root = Node(prompt)
        logits = self._forward(root)
        self._roots[prompt] = (root, logits)
        while len(self._roots) > self.capacity:
            old, _ = self._roots.popitem(last=False)[1]
            self.model.cache.discard(old)
        return root, logits

    def _start(self, task: Task) -> tuple[Node, Node, torch.Tensor]:
        """The prompt's root, the node after the prefix and its next-token logits, each chunk forwarded
        alone on top of the one before unless kept (see the module docstring)."""
        root, logits = self._root(task.prompt)
        node, begin = root, 0
        for end in task.ends():
            key = (task.prompt, task.prefix[:end])
            kept = self._chunks.get(key)
            if kept is not None and kept[0] in self.model.cache and kept[0].parent is node:
                self._chunks.move_to_end(key)
                node, logits = kept
            else:
                node = Node(task.prefix[begin:end], node, (0.0,) * (end - begin))
                logits = self._forward(node)
                self._chunks[key] = (node, logits)
                while len(self._chunks) > self.prefix_capacity:
                    old, _ = self._chunks.popitem(last=False)[1]
                    self.model.cache.discard(old)
            begin = end
        return root, node, logits

    def _forward(self, node: Node) -> torch.Tensor:
        self._forwarded += 1
        return self.model.logits([node])[0].clone()

    def _run(self, task: Task, on_token=None) -> TaskResult:
        model, stopping = self.model, task.stopping
        root, start, logits = self._start(task)
        constraint = task.constraint
        if constraint is not None and not isinstance(constraint, Constraint):
            constraint = constraint.compile(model)  # a spec; a compiled Constraint only reaches in-process runners
        root.state = constraint.start() if constraint is not None else None
        root.closing = 0
        if start is not root:
            start.state = root.state.advance_many(list(task.prefix)) if root.state is not None else None
            start.closing = 0
        start_budget(start, stopping)
        result = TaskResult(task.id)
        if task.top:
            allowed = logits.log_softmax(dim=-1)
            if start.state is not None:
                allowed = constrain(allowed.unsqueeze(0).clone(), [start])[0]
            values, tokens = torch.topk(allowed, min(task.top, allowed.numel()))
            result.top = [(int(t), float(v)) for v, t in zip(values.tolist(), tokens.tolist()) if v != float("-inf")]
        if task.seeds:
            rule = Rule(stopping, task.jump_forward, task.to_end, task.step, task.max_step_tokens)
            rows = [
                Row(start, start, len(task.prompt), rule, *self._policy(task, seed), owner=0) for seed in task.seeds
            ]
            decoder = Decoder(model)
            decode_rows(decoder, rows, {id(start): logits}, on_token, task.first)
            result.expansions = decoder.forwarded
            result.backtracks = decoder.backtracks
            result.rows = [_completion(row.node, start) for row in rows]
        return result

    def _policy(self, task: Task, seed: int | None) -> tuple[Sample | None, torch.Generator | None]:
        if seed is None:
            return None, None
        return task.sample, generator(seed, self.model.device)


def _completion(leaf: Node, start: Node) -> Completion:
    tokens, logprobs = leaf.generated()
    tokens, logprobs = tokens[start.depth :], logprobs[start.depth :]  # after the start (its prefix)
    return Completion(tuple(tokens), tuple(float(v) for v in logprobs), leaf.finish_reason, leaf.backtracks)


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
