"""The serving engine: one model, one worker thread, step-level continuous batching.

Requests (`Job`s) queue; before every decoding step the worker admits queued jobs while the batch
has room (`max_rows` hypotheses). A step is one batched forward over every running hypothesis of
every job (the prefix cache makes it one token a row), plus one over the prompts of newly admitted
jobs (kept apart so that one-token rows are not padded to a prompt's length); then each job chooses
its own tokens with its own settings: greedy or seeded sampling, its constraint's masks, its own
stop rules (the same rules and helpers as `searchdec.search.decode`, which decodes one fixed batch).
A job's events go to a callback that must not block (the server hands them to the client's asyncio
queue), so a slow reader never stalls the batch; a cancelled job (a client that went away) leaves
the batch before the next step and its cache entries are freed. `stop()` finishes every admitted
and queued job before the thread ends.

A job whose search is not stepwise (beam, best-of-N, ...) runs as one whole search call on the same
worker thread (one thread owns the model and its prefix cache), one search call at a time in arrival
order; searches waiting together with the same settings share one call (their prompts batched as
`sd.generate` batches a list of prompts). The search sees the model through `_SearchModel`: before
each of the search's forwards the batch advances one step, so running requests keep streaming and
new ones are admitted while a search runs (the search's own forwards stay apart from the batch's, so
it computes what `sd.generate` computes); the next forward is refused once every job of the call is
cancelled (the search stops there); and every cache entry the search made is freed however it
ended. Its hypotheses are reported when it ends.

Tokens the grammar forces are appended without a forward of their own (jump-forward) unless the job
asks for log-probabilities: then every token gets its own forward, so that its top alternatives are
known when it is reported.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from searchdec.grammars.base import Constraint
from searchdec.search.base import Search
from searchdec.search.rows import Decoder, Row, Rule, Stopping, forward, generator, start_budget
from searchdec.search.sampling import Greedy, Sample
from searchdec.search.tasks import task_seed
from searchdec.search.tree import Node
from searchdec.search.work import Work


@dataclass
class TokenLogprob:
    """One generated token with its log-probability and, if asked, the most probable alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Tokens:
    choice: int
    tokens: list[int]
    logprobs: list[TokenLogprob] | None  # None unless the job asked for them


@dataclass
class Finished:
    choice: int
    reason: str  # "stop" | "length" | "unsatisfied" (a check unmet within the budget; see output.openai_finish)
    tokens: int  # generated tokens, an end-of-sequence token included


@dataclass
class Failed:
    error: BaseException


@dataclass
class Done:
    pass


Event = Tokens | Finished | Failed | Done


@dataclass
class Job:
    """One request: a tokenized prompt decoded into `n` hypotheses."""

    prompt: list[int]
    search: Greedy | Sample | Search
    n: int
    stopping: Stopping
    emit: Callable[[Event], None]
    constraint: Constraint | None = None
    top_logprobs: int | None = None  # None: no log-probabilities; k: the token's and its k best alternatives
    cancelled: bool = False

    def cancel(self) -> None:
        """Ask the worker to drop this job (safe from any thread)."""
        self.cancelled = True


@dataclass
class _Running:
    job: Job
    root: Node
    rows: list[Row] = field(default_factory=list)  # open choices (Row.owner: the choice index)
    started: bool = False
    open_choices: int = 0


@dataclass
class EngineStats:
    queued: int = 0  # jobs waiting, whole searches included
    running: int = 0  # jobs in the batch, plus those of the search call in progress
    rows: int = 0  # hypotheses in the batch
    steps: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    max_batch_rows: int = 0  # the widest step so far
    searches: int = 0  # whole search calls (jobs with the same search queued together share one)


class Engine:
    """Continuous batching over one `Model`; `submit` from any thread, events come back per job."""

    def __init__(self, model, max_rows: int = 64) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.model = model
        self.max_rows = max_rows
        self._decoder = Decoder(model)  # the one decoding step, for the batch's rows
        self._queue: deque[Job] = deque()
        self._running: list[_Running] = []
        self._searches: deque[Job] = deque()  # admitted whole searches, waiting their turn
        self._searching: list[Job] = []  # the jobs of the search call in progress
        self._wake = threading.Condition()
        self._stopping = False
        self._stats = EngineStats()
        self._thread = threading.Thread(target=self._loop, name="searchdec-engine", daemon=True)
        self._ids = itertools.count()

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._wake:
            if self._stopping:
                raise RuntimeError("the engine is shutting down")
            self._queue.append(job)
            self._wake.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every admitted and queued job, then end the worker."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        """Let an idle worker notice a cancellation now rather than at its next step."""
        with self._wake:
            self._wake.notify()

    @property
    def stats(self) -> EngineStats:
        with self._wake:
            s = self._stats
            return EngineStats(
                len(self._queue) + len(self._searches),
                len(self._running) + len(self._searching),
                sum(len(r.rows) if r.started else r.job.n for r in self._running),
                s.steps,
                s.completed,
                s.cancelled,
                s.failed,
                s.max_batch_rows,
                s.searches,
            )

    # --- the worker -----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._admit()
                while not self._running and not self._searches and not (self._stopping and not self._queue):
                    self._wake.wait()
                    self._admit()
                if not self._running and not self._searches and self._stopping and not self._queue:
                    return
                self._searching = self._search_group()
            if self._searching:
                self._search(self._searching)
                with self._wake:
                    self._searching = []
            self._batch_step()

    def _batch_step(self) -> None:
        """Advance the batch by one step: from the loop, or from inside a whole search before each
        of its forwards (so that the batch keeps decoding while a search runs)."""
        with self._wake:
            self._admit()
        self._drop_cancelled()
        if self._running:
            try:
                self._step()
            except Exception as error:  # a failed forward fails the jobs in it, not the server
                for running in self._running:
                    self._release(running)
                    self._stats.failed += 1
                    running.job.emit(Failed(error))
                self._running = []

    def _admit(self) -> None:
        rows = sum(len(r.rows) if r.started else r.job.n for r in self._running)
        while self._queue:
            job = self._queue[0]
            if job.cancelled:
                self._queue.popleft()
                self._stats.cancelled += 1
                continue
            if not isinstance(job.search, (Greedy, Sample)):
                self._searches.append(self._queue.popleft())  # runs whole, outside the batch's rows
                continue
            if self._running and rows + job.n > self.max_rows:
                break
            self._queue.popleft()
            root = Node(tuple(job.prompt), state=job.constraint.start() if job.constraint else None)
            start_budget(root, job.stopping)
            rule = Rule(job.stopping, jump_forward=job.top_logprobs is None)
            choices = [
                Row(root, root, len(root.new_tokens), rule, *self._policy(job, j), owner=j) for j in range(job.n)
            ]
            self._running.append(_Running(job, root, choices))
            rows += job.n

    def _policy(self, job: Job, choice: int) -> tuple[Greedy | Sample | None, torch.Generator | None]:
        """How a choice draws: greedy (after its logit processors, if any), or from its own generator
        seeded as `generate`'s sample j of a one-prompt call (`task_seed(seed, 0, j)`), so a seeded
        request gives what a script gets."""
        if isinstance(job.search, Greedy):
            return (job.search if job.search.processes else None), None
        if not isinstance(job.search, Sample):
            return None, None
        seed = job.search.seed
        return job.search, generator(None if seed is None else task_seed(seed, 0, choice), self.model.device)

    def _search_group(self) -> list[Job]:
        """The next waiting search and those queued behind it that can share its search call (the
        same search, stopping rule and compiled constraint, and no seed: a seeded sampler's draws
        must not depend on what else is queued), as many as `max_rows` beams or samples allow."""
        if not self._searches:
            return []
        first = self._searches.popleft()
        group = [first]
        if _seeded(first.search):
            return group
        width = _width(first.search)
        kept: deque[Job] = deque()
        while self._searches:
            job = self._searches.popleft()
            joins = job.search == first.search and job.stopping == first.stopping and job.constraint is first.constraint
            if joins and width * (len(group) + 1) <= self.max_rows:
                group.append(job)
            else:
                kept.append(job)
        self._searches = kept
        return group

    def _search(self, jobs: list[Job]) -> None:
        """Run one whole search over the jobs' prompts and report each job's hypotheses, best first,
        as its choices."""
        wanted = [job for job in jobs if not job.cancelled]
        self._stats.cancelled += len(jobs) - len(wanted)
        jobs = wanted
        if not jobs:
            return
        model = _SearchModel(self.model, jobs, self._batch_step)
        roots = [Node(tuple(job.prompt), state=job.constraint.start() if job.constraint else None) for job in jobs]
        self._stats.searches += 1
        try:
            with Work(model, jobs[0].stopping, jobs[0].constraint) as work:
                outcomes = jobs[0].search.run(work, roots)
        except _Cancelled:
            self._stats.cancelled += len(jobs)
            return
        except Exception as error:  # a failed search fails its jobs, not the server
            for job in jobs:
                self._stats.failed += 1
                job.emit(Failed(error))
            return
        finally:
            model.release()
        for job, outcome in zip(jobs, outcomes):
            if job.cancelled:  # went away while others of its group were still wanted
                self._stats.cancelled += 1
                continue
            leaves = outcome.leaves[: job.n]
            for choice, leaf in enumerate(leaves):
                tokens, logprobs = leaf.generated()
                entries = None
                if job.top_logprobs is not None:
                    entries = [TokenLogprob(token, lp) for token, lp in zip(tokens, logprobs)]
                job.emit(Tokens(choice, tokens, entries))
                job.emit(Finished(choice, leaf.finish_reason or "length", leaf.depth))
            for choice in range(len(leaves), job.n):  # a search that found fewer hypotheses than asked
                job.emit(Finished(choice, "length", 0))
            self._stats.completed += 1
            job.emit(Done())

    def _drop_cancelled(self) -> None:
        kept = []
        for running in self._running:
            if running.job.cancelled:
                self._release(running)
                self._stats.cancelled += 1
            else:
                kept.append(running)
        self._running = kept

    def _release(self, running: _Running) -> None:
        self._decoder.release(running.rows)
        self.model.cache.discard(running.root)

    def _step(self) -> None:
        # Prompts of newly admitted jobs get a forward of their own: in one forward with the running
        # rows, every one-token row would be padded to the longest new prompt.
        new = [running for running in self._running if not running.started]
        old = [running for running in self._running if running.started]
        self._stats.steps += 1
        still: list[_Running] = []
        for group in (new, old):
            if group:
                still += self._forward_group(group)
        with self._wake:
            self._running = still

    def _forward_group(self, group: list[_Running]) -> list[_Running]:
        """One forward over the group's rows, then each job advances; the jobs still open come back."""
        nodes: list[Node] = []
        for running in group:
            nodes += [running.root] if not running.started else [row.node for row in running.rows]
        nodes = list({id(node): node for node in nodes}.values())
        self._stats.max_batch_rows = max(self._stats.max_batch_rows, len(nodes))
        logits = forward(self.model, nodes)
        known = {id(node): row for node, row in zip(nodes, logits)}
        still: list[_Running] = []
        for running in group:
            try:
                self._advance(running, known)
            except Exception as error:  # e.g. a grammar that refuses every token: this job only
                self._release(running)
                self._stats.failed += 1
                running.job.emit(Failed(error))
                continue
            if running.open_choices:
                still.append(running)
            else:
                self.model.cache.discard(running.root)
                self._stats.completed += 1
                running.job.emit(Done())
        return still

    def _advance(self, running: _Running, known: dict[int, torch.Tensor]) -> None:
        """One token for each open choice of the job, by the one decoding step (search/rows.py)."""
        job = running.job
        self._decoder.advance(running.rows, known)
        running.started = True
        ended = []
        for row in running.rows:
            entries = None
            if job.top_logprobs is not None:
                token = row.node.new_tokens[0]
                top = []
                if job.top_logprobs:
                    values, ids = row.logprobs.topk(job.top_logprobs)
                    top = list(zip(ids.tolist(), values.tolist()))
                entries = [TokenLogprob(token, float(row.logprobs[token]), top)]
            job.emit(Tokens(row.owner, list(row.node.new_tokens), entries))
            if row.node.finish_reason is not None:
                job.emit(Finished(row.owner, row.node.finish_reason, row.node.depth))
                ended.append(row)
        if ended:
            self._decoder.release(ended)
        running.rows = [row for row in running.rows if not row.ended]
        running.open_choices = len(running.rows)


class _Cancelled(Exception):
    """Raised inside a whole search at its next forward once its job was cancelled."""


def _seeded(search) -> bool:
    return getattr(getattr(search, "sample", None), "seed", None) is not None


def _width(search) -> int:
    """Rows one prompt of this search forwards at a time, at most (beams, or samples)."""
    return max(getattr(search, "width", 0) or 0, getattr(search, "n", 1) or 1)


class _SearchModel:
    """The model as a whole search on the worker sees it: before each of the search's forwards the
    batch advances one step (`between`), then the forward runs if any of the jobs is still wanted;
    every node forwarded is remembered so that its cache entry can be freed when the search ends,
    whether it finished, failed or was cancelled."""

    def __init__(self, model, jobs: list[Job], between: Callable[[], None]) -> None:
        self._model = model
        self._jobs = jobs
        self._between = between
        self._forwarded: dict[int, Node] = {}

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def logits(self, nodes) -> torch.Tensor:
        return self.logits_last(nodes, 1)[:, 0]

    def logits_last(self, nodes, keep: int) -> torch.Tensor:
        self._between()
        if all(job.cancelled for job in self._jobs):
            raise _Cancelled
        for node in nodes:
            self._forwarded[id(node)] = node
        return self._model.logits_last(nodes, keep)

    def release(self) -> None:
        for node in self._forwarded.values():
            self._model.cache.discard(node)
        self._forwarded.clear()
