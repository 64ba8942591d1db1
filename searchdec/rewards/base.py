"""The Reward protocol: one interface for scoring whole outputs and the steps of one.

A reward maps (prompt, output) to a float, higher is better. Search algorithms call
`score_batch(prompts, outputs)` with a whole frontier at once, so a model-based reward runs one
batched forward per call; `score_steps(prompt, steps)` gives one score per step prefix (a process
reward model scores each step in one pass; any other reward scores each prefix as an output). Scores
are cached per (prompt, output): a search revisits the same text often (MCTS re-reads a node's path,
best-of-N samples repeat) and an execution reward is expensive. An algorithm never knows whether its
reward runs SQL or a PRM (llm-reasoners' split of world, reward and search).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence


class Reward:
    """Subclasses implement `_score(prompts, outputs) -> list[float]` (a batch; both lists the same length)."""

    cache_size = 4096

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.calls = 0  # batches scored (cache misses only)
        self.scored = 0  # outputs scored (cache misses only)

    def __call__(self, prompt: str, output: str) -> float:
        return self.score(prompt, output)

    def score(self, prompt: str, output: str) -> float:
        return self.score_batch([prompt], [output])[0]

    def score_batch(self, prompts: Sequence[str], outputs: Sequence[str]) -> list[float]:
        if len(prompts) != len(outputs):
            raise ValueError(f"{len(prompts)} prompts but {len(outputs)} outputs")
        keys = [(str(p), str(o)) for p, o in zip(prompts, outputs)]
        missing = list(dict.fromkeys(key for key in keys if key not in self._cache))
        if missing:
            values = self._score([p for p, _ in missing], [o for _, o in missing])
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
                value = float(self._score([key[0]], [key[1]])[0])
            out.append(value)
        return out

    def score_steps(self, prompt: str, steps: Sequence[str]) -> list[float]:
        """One score per step: the score of the output made of the steps so far."""
        prefixes = ["".join(steps[: i + 1]) for i in range(len(steps))]
        return self.score_batch([prompt] * len(prefixes), prefixes)

    def _remember(self, key: tuple[str, str], value: float) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _score(self, prompts: list[str], outputs: list[str]) -> list[float]:
        raise NotImplementedError

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

    def __repr__(self) -> str:
        return " + ".join(f"{w:g}*{r!r}" for w, r in self.terms)

    def __add__(self, other):
        other = as_reward(other)
        extra = other.terms if isinstance(other, Weighted) else [(1.0, other)]
        return Weighted([*self.terms, *extra])

    def __mul__(self, weight):
        return Weighted([(w * float(weight), r) for w, r in self.terms])

    __rmul__ = __mul__

    def _score(self, prompts, outputs):
        total = [0.0] * len(outputs)
        for weight, reward in self.terms:
            for i, value in enumerate(reward.score_batch(prompts, outputs)):
                total[i] += weight * value
        return total


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
