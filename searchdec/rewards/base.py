"""The Reward protocol: one interface for scoring whole outputs and the steps of one.

A reward maps (prompt, output) to a float, higher is better. Search algorithms call
`score_batch(prompts, outputs, logprobs=...)` with a whole frontier at once, so a model-based reward
runs one batched forward per call; `logprobs` gives each output's per-token log-probabilities under
the model (the searches always pass them; a reward that reads them declares `uses_logprobs = True`
and gets them as a third argument of `_score`, every other reward ignores them).
`score_steps(prompt, steps)` gives one score per step prefix (a process reward model scores each
step in one pass; any other reward scores each prefix as an output). Scores are cached per
(prompt, output), plus the log-probabilities for a reward that reads them: a search revisits the
same text often (MCTS re-reads a node's path, best-of-N samples repeat) and an execution reward is
expensive. A reward pickles without its cache, so an executor can ship it to a worker. An algorithm
never knows whether its reward runs SQL or a PRM (llm-reasoners' split of world, reward and search).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

Logprobs = Sequence[Sequence[float]]
_Key = tuple  # (prompt, output) or, for a reward that reads log-probabilities, (prompt, output, logprobs)


class Reward:
    """Subclasses implement `_score(prompts, outputs) -> list[float]` (a batch; both lists the same
    length), or, with `uses_logprobs = True`, `_score(prompts, outputs, logprobs)`."""

    cache_size = 4096
    uses_logprobs = False  # True: scores need each output's token log-probabilities (score_batch's logprobs=)

    def __init__(self) -> None:
        self._cache: OrderedDict[_Key, float] = OrderedDict()
        self.calls = 0  # batches scored (cache misses only)
        self.scored = 0  # outputs scored (cache misses only)

    def __call__(self, prompt: str, output: str) -> float:
        return self.score(prompt, output)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": OrderedDict()}  # a copy (on another worker) starts with no cache

    def score(self, prompt: str, output: str, logprobs: Sequence[float] | None = None) -> float:
        return self.score_batch([prompt], [output], logprobs=None if logprobs is None else [logprobs])[0]

    def score_batch(
        self, prompts: Sequence[str], outputs: Sequence[str], logprobs: Logprobs | None = None
    ) -> list[float]:
        """One score per (prompt, output); `logprobs[i]` holds output i's token log-probabilities."""
        if len(prompts) != len(outputs):
            raise ValueError(f"{len(prompts)} prompts but {len(outputs)} outputs")
        if logprobs is not None and len(logprobs) != len(outputs):
            raise ValueError(f"{len(logprobs)} logprobs lists but {len(outputs)} outputs (one list per output)")
        if self.uses_logprobs:
            if logprobs is None:
                raise ValueError(
                    f"{type(self).__name__} scores an output by its token log-probabilities: pass "
                    "score_batch(prompts, outputs, logprobs=...), one list per output; text alone cannot be scored"
                )
            keys = [(str(p), str(o), tuple(map(float, lp))) for p, o, lp in zip(prompts, outputs, logprobs)]
        else:
            keys = [(str(p), str(o)) for p, o in zip(prompts, outputs)]
        missing = list(dict.fromkeys(key for key in keys if key not in self._cache))
        if missing:
            values = self._score_keys(missing)
            if len(values) != len(missing):
                raise RuntimeError(f"{type(self).__name__} returned {len(values)} scores for {len(missing)} outputs")
            self.calls += 1
            self.scored += len(missing)
            for key, value in zip(missing, values):
                self._remember(key, float(value))
        out = []
        for key in keys:
            value = self._cache.get(key)
            if value is None:  # evicted within this very batch (a batch larger than the cache)
                value = float(self._score_keys([key])[0])
            out.append(value)
        return out

    def _score_keys(self, keys: list[_Key]) -> list[float]:
        prompts, outputs = [key[0] for key in keys], [key[1] for key in keys]
        if self.uses_logprobs:
            return self._score(prompts, outputs, [list(key[2]) for key in keys])
        return self._score(prompts, outputs)

    def score_steps(self, prompt: str, steps: Sequence[str]) -> list[float]:
        """One score per step: the score of the output made of the steps so far."""
        prefixes = ["".join(steps[: i + 1]) for i in range(len(steps))]
        return self.score_batch([prompt] * len(prefixes), prefixes)

    def _remember(self, key: _Key, value: float) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _score(self, prompts: list[str], outputs: list[str], logprobs: list[list[float]] | None = None) -> list[float]:
        raise NotImplementedError(f"{type(self).__name__} must implement _score(prompts, outputs)")

    def __add__(self, other: Reward) -> Weighted:
        return Weighted([(1.0, self), (1.0, as_reward(other))])

    def __mul__(self, weight: float) -> Weighted:
        return Weighted([(float(weight), self)])

    __rmul__ = __mul__


class FunctionReward(Reward):
    """Any Python callable `f(prompt, output) -> float` (or `f(output)`) as a Reward."""

    def __init__(self, function: Callable, takes_prompt: bool | None = None) -> None:
        super().__init__()
        if not callable(function):
            raise TypeError(f"a reward must be callable, got {type(function).__name__}")
        self.function = function
        self.takes_prompt = _takes_two(function) if takes_prompt is None else takes_prompt

    def __repr__(self) -> str:
        return f"FunctionReward({getattr(self.function, '__name__', self.function)!r})"

    def _score(self, prompts, outputs):
        if self.takes_prompt:
            return [float(self.function(p, o)) for p, o in zip(prompts, outputs)]
        return [float(self.function(o)) for o in outputs]


class Weighted(Reward):
    """A weighted sum of rewards: `0.7 * sd.rewards.JsonValid(schema) + 0.3 * my_reward`."""

    def __init__(self, terms: Sequence[tuple[float, Reward]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("a weighted reward needs at least one term")
        self.terms = [(float(w), as_reward(r)) for w, r in terms]
        self.uses_logprobs = any(r.uses_logprobs for _, r in self.terms)

    def __repr__(self) -> str:
        return " + ".join(f"{w:g}*{r!r}" for w, r in self.terms)

    def __add__(self, other):
        other = as_reward(other)
        extra = other.terms if isinstance(other, Weighted) else [(1.0, other)]
        return Weighted([*self.terms, *extra])

    def __mul__(self, weight):
        return Weighted([(w * float(weight), r) for w, r in self.terms])

    __rmul__ = __mul__

    def _score(self, prompts, outputs, logprobs=None):
        total = [0.0] * len(outputs)
        for weight, reward in self.terms:
            for i, value in enumerate(reward.score_batch(prompts, outputs, logprobs=logprobs)):
                total[i] += weight * value
        return total


class Lazy(Reward):
    """A reward built where it is first used: `factory(*args, **kwargs)`, a Reward or a callable. It
    pickles as that recipe, so an executor ships the recipe and each worker builds (loads) the reward
    once: a process reward model is never pickled. Calls go to the built reward's own `score_batch`
    and `score_steps` (a PRM still scores a solution's steps in one pass). `uses_logprobs` is
    declared here, since reading it from the built reward would build it where it is made."""

    def __init__(self, factory: Callable, *args, uses_logprobs: bool = False, **kwargs) -> None:
        super().__init__()
        if not callable(factory):
            raise TypeError(f"Lazy needs a callable factory, got {type(factory).__name__}")
        self.factory, self.args, self.kwargs = factory, args, kwargs
        self.uses_logprobs = uses_logprobs
        self._built: Reward | None = None

    def __repr__(self) -> str:
        return f"Lazy({getattr(self.factory, '__name__', self.factory)!r})"

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_built": None}

    def built(self) -> Reward:
        if self._built is None:
            self._built = as_reward(self.factory(*self.args, **self.kwargs))
            if self._built.uses_logprobs and not self.uses_logprobs:
                raise ValueError(f"{self._built!r} reads log-probabilities: declare Lazy(..., uses_logprobs=True)")
        return self._built

    def score_batch(
        self, prompts: Sequence[str], outputs: Sequence[str], logprobs: Logprobs | None = None
    ) -> list[float]:
        return self.built().score_batch(prompts, outputs, logprobs=logprobs)

    def score_steps(self, prompt: str, steps: Sequence[str]) -> list[float]:
        return self.built().score_steps(prompt, steps)


def as_reward(reward) -> Reward:
    """A Reward from a Reward or a callable."""
    if isinstance(reward, Reward):
        return reward
    if callable(reward):
        return FunctionReward(reward)
    raise TypeError(f"expected a Reward or a callable, got {type(reward).__name__}")


def _takes_two(function: Callable) -> bool:
    import inspect

    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [
        p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return True
    if len(positional) not in (1, 2):
        raise TypeError("a reward callable takes (output) or (prompt, output)")
    return len(positional) == 2
