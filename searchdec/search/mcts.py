"""Monte Carlo tree search with PUCT (Silver et al., "Mastering the game of Go without human
knowledge", 2017; for LLM decoding as in Zhang et al., "Planning with Large Language Models for Code
Generation", arXiv 2303.05510, and rStar/ReST-MCTS*), over tokens or reasoning steps.

Each simulation descends from the root by PUCT,
    argmax_child  Q(child) + c_puct * P(child) * sqrt(N(node)) / (1 + N(child)),
(Q: mean value, 0 before a visit; ties: the earlier child) until it reaches a terminal node or a node
that may grow. With `step="token"` a node grows once: one forward gives its `max_children` most
probable allowed tokens as children, priors their renormalised probabilities. With a step
delimiter, a node grows by progressive widening (Couëtoux et al. 2011): while it has fewer than
`ceil(widen * N(node) ** alpha)` children, a newly sampled step is added, priors being the
softmax over siblings of each step's mean token log-probability. The new node's value is
`reward(prompt_text, text)` of a rollout to the end (`rollout="greedy"` or `"sample"`), or of the
partial text itself (`rollout=None`: the reward is a value function / PRM), and is backed up along
the path (visit counts +1, value sums +value). Every terminal hypothesis reached, in the tree or by
a rollout, is a result; results are ranked by reward (then by log-probability), so the returned best
is the best-rewarded complete output found, and the trace holds the tree with visit counts.

All prompts' simulations advance together, as tasks on the call's executor (none given: an
in-process one), so a seed gives the same search everywhere. Each round selects up to `parallel` leaves per
prompt with virtual loss (Chaslot et al., "Parallel Monte-Carlo Tree Search", 2008; as AlphaGo):
every node on a selected path counts one extra visit of value `-virtual_loss` until its simulation
backs up, which steers the next selection elsewhere; a token-level leaf or a terminal node already
chosen this round ends the round's selection (a node that widens by a step may be chosen again: each
choice samples another step). The round's expansions and rollouts run as tasks in parallel — a
token-level leaf's expansion (its `max_children` top tokens) and its rollout are one task — their
rewards are scored in one batch per prompt, and the paths are backed up in selection order, virtual
loss removed. Simulation s of prompt i samples with the seed `task_seed(sample.seed, i, s, ...)`,
so the search depends on `parallel` but not on which worker runs what; `parallel=1` is sequential
PUCT.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from searchdec.rewards.base import Reward
from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int, text_of
from searchdec.search.expand import Expander
from searchdec.search.sampling import Sample
from searchdec.search.steps import step_pattern
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Job, Work


@dataclass(frozen=True)
class MCTS(Search):
    """PUCT tree search whose values come from `reward` (of rollouts, or of partial outputs)."""

    distributable = True

    simulations: int = 32
    c_puct: float = 1.0
    step: object = "token"
    reward: Reward | Callable[[str, str], float] | None = None
    rollout: str | None = "greedy"
    max_children: int = 4
    widen: float = 1.0
    alpha: float = 0.5
    sample: Sample = field(default_factory=lambda: Sample(temperature=1.0, seed=0))
    num_return: int = 1
    parallel: int = 1  # leaves selected per round (virtual loss keeps them apart)
    virtual_loss: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int("simulations", self.simulations)
        check_positive_int("parallel", self.parallel)
        if not (isinstance(self.virtual_loss, (int, float)) and self.virtual_loss >= 0):
            raise ValueError(f"virtual_loss must be a number >= 0, got {self.virtual_loss!r}")
        check_positive_int("max_children", self.max_children)
        check_positive_int("num_return", self.num_return)
        if not (isinstance(self.c_puct, (int, float)) and self.c_puct >= 0):
            raise ValueError(f"c_puct must be a number >= 0, got {self.c_puct!r}")
        if self.rollout not in ("greedy", "sample", None):
            raise ValueError(f'rollout must be "greedy", "sample" or None, got {self.rollout!r}')
        if not self.widen > 0 or not 0 <= self.alpha <= 1:
            raise ValueError(f"widening needs widen > 0 and 0 <= alpha <= 1, got {self.widen}, {self.alpha}")
        step_pattern(self.step)
        self._wrap_reward()

    @property
    def n(self) -> int:
        return self.num_return

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        """Rounds of `parallel` simulations per prompt, dispatched as tasks (see module docstring)."""
        self._require_reward()
        model = work.model
        expander = Expander(model, work.stopping)
        pattern = step_pattern(self.step)
        base = work.base_seed(self.sample)
        trees = [_Tree(root, self, model, expander) for root in roots]
        done = [0] * len(trees)
        policy = self.sample if self.rollout == "sample" else None
        while any(d < self.simulations for d in done):
            picks: list[tuple[int, list[Node], int]] = []  # (tree, path, simulation number)
            for t, tree in enumerate(trees):
                chosen: set[int] = set()
                for _ in range(min(self.parallel, self.simulations - done[t])):
                    path = tree.select()
                    leaf = path[-1]
                    if id(leaf) in chosen:
                        break
                    if pattern is None or tree.is_terminal(leaf):
                        chosen.add(id(leaf))
                    tree.visit(path, -self.virtual_loss)
                    picks.append((t, path, done[t]))
                    done[t] += 1

            def rollout_seed(t: int, sim: int) -> int | None:
                return None if self.rollout == "greedy" else work.seed(base, t, sim, "rollout")

            grow = [(t, path, sim) for t, path, sim in picks if not trees[t].is_terminal(path[-1])]
            evaluated: dict[int, tuple[list[Node], Node]] = {}  # pick -> (path, node whose value backs up)
            finals: dict[int, Node] = {}
            if pattern is None:
                jobs = [
                    Job(
                        trees[t].root,
                        path[-1],
                        [rollout_seed(t, sim)] if self.rollout else [],
                        self.max_children,
                        trees[t].stats,
                    )
                    for t, path, sim in grow
                ]
                for (t, path, _), result in zip(grow, work.run(jobs, policy)):
                    trees[t].add_children(path[-1], result.top)
                    evaluated[id(path)] = (path, path[-1])
                    if result.rows:
                        finals[id(path)] = result.rows[0]
            else:
                jobs = [
                    Job(trees[t].root, path[-1], [work.seed(base, t, sim, "step")], 0, trees[t].stats)
                    for t, path, sim in grow
                ]
                for (t, path, _), result in zip(grow, work.run(jobs, self.sample, to_end=False, step=pattern)):
                    child = result.rows[0]
                    trees[t].add_step_child(path[-1], child)
                    evaluated[id(path)] = ([*path, child], child)
                roll = [(t, path, sim) for t, path, sim in grow if not trees[t].is_terminal(evaluated[id(path)][1])]
                if self.rollout is not None and roll:
                    jobs = [
                        Job(trees[t].root, evaluated[id(p)][1], [rollout_seed(t, sim)], 0, trees[t].stats)
                        for t, p, sim in roll
                    ]
                    for (_, path, _), result in zip(roll, work.run(jobs, policy)):
                        finals[id(path)] = result.rows[0]
            targets: list[tuple[int, list[Node], Node]] = []
            for t, path, _ in picks:
                full, node = evaluated.get(id(path), (path, path[-1]))
                targets.append((t, full, finals.get(id(path), node)))
            for t, tree in enumerate(trees):
                tree.score([target for owner, _, target in targets if owner == t], work)
            for (t, path, _), (_, full, target) in zip(picks, targets):
                tree = trees[t]
                value = tree.value(target)
                if target.finish_reason is not None:
                    tree.record(target, value)
                tree.visit(path, -self.virtual_loss, undo=True)
                tree.backup(full, value)
        return [tree.result() for tree in trees]


class _Tree:
    def __init__(self, root: Node, spec: MCTS, model, expander: Expander) -> None:
        self.root = root
        self.expander = expander
        self.spec = spec
        self.model = model
        self.prompt = model.decode(list(root.new_tokens))
        self.children: dict[int, list[Node]] = {}
        self.prior: dict[int, float] = {}
        self.visits: dict[int, int] = {}
        self.total: dict[int, float] = {}
        self.step_logprob: dict[int, float] = {}
        self.rewards: dict[str, float] = {}
        self.results: dict[int, tuple[float, Node]] = {}
        self.stats = SearchStats()
        self.trace = Trace("MCTS", _params(spec), model.decode)
        self.trace.add(root, status="root")

    def is_terminal(self, node: Node) -> bool:
        return node.finish_reason is not None

    def select(self) -> list[Node]:
        path = [self.root]
        node = self.root
        while not self.is_terminal(node):
            children = self.children.get(id(node))
            if children is None:
                return path  # a token-level node not expanded yet
            if step_pattern(self.spec.step) is not None:
                allowed = math.ceil(self.spec.widen * max(self.visits.get(id(node), 0), 1) ** self.spec.alpha)
                if len(children) < allowed:
                    return path
            if not children:
                return path
            node = max(children, key=lambda c: (self._puct(node, c), -children.index(c)))
            path.append(node)
        return path

    def _puct(self, parent: Node, child: Node) -> float:
        n = self.visits.get(id(child), 0)
        q = self.total.get(id(child), 0.0) / n if n else 0.0
        return q + self.spec.c_puct * self.prior[id(child)] * math.sqrt(self.visits.get(id(parent), 0)) / (1 + n)

    def add_children(self, node: Node, keep: list[tuple[int, float]]) -> None:
        """Children for the (token, log-probability) pairs, best first; priors renormalised over them."""
        norm = sum(math.exp(v) for _, v in keep) or 1.0
        children = []
        for t, v in keep:
            child = node.child((t,), (v,))
            self.prior[id(child)] = math.exp(v) / norm
            self._finish(child)
            children.append(child)
        self.children[id(node)] = children

    def add_step_child(self, node: Node, child: Node) -> None:
        siblings = self.children.setdefault(id(node), [])
        siblings.append(child)
        self.trace.add(child, status="tree", parent=node)
        length = max(child.depth - node.depth, 1)
        self.step_logprob[id(child)] = (child.logprob - node.logprob) / length
        m = max(self.step_logprob[id(s)] for s in siblings)
        weights = [math.exp(self.step_logprob[id(s)] - m) for s in siblings]
        for s, w in zip(siblings, weights):
            self.prior[id(s)] = w / sum(weights)

    def _finish(self, node: Node) -> None:
        node.finish_reason = self.expander.finish_reason(node, self.root)

    def value(self, node: Node) -> float:
        """The reward of `node`'s text, scored by `score` this round."""
        return self.rewards[text_of(self.model, node)]

    def score(self, nodes: list[Node], work) -> None:
        """Reward every node's text not scored yet, in one batch where `work`'s executor runs rewards."""
        texts = list(dict.fromkeys(t for t in (text_of(self.model, n) for n in nodes) if t not in self.rewards))
        if texts:
            logprobs = [next(n for n in nodes if text_of(self.model, n) == t).generated()[1] for t in texts]
            self.rewards.update(zip(texts, work.score(self.spec.reward, self.prompt, texts, logprobs)))
            self.stats.reward_calls += len(texts)

    def visit(self, path: list[Node], value: float, undo: bool = False) -> None:
        """Count (or, with `undo`, uncount) one visit of `value` along `path`: virtual loss."""
        sign = -1 if undo else 1
        for node in path:
            self.visits[id(node)] = self.visits.get(id(node), 0) + sign
            self.total[id(node)] = self.total.get(id(node), 0.0) + sign * value

    def record(self, leaf: Node, value: float) -> None:
        state = leaf.state
        if state is not None and leaf.finish_reason == "stop" and not (state.accepting or state.finished):
            return
        self.results.setdefault(id(leaf), (value, leaf))

    def backup(self, path: list[Node], value: float) -> None:
        for node in path:
            self.visits[id(node)] = self.visits.get(id(node), 0) + 1
            self.total[id(node)] = self.total.get(id(node), 0.0) + value
        for node in path:
            n = self.visits[id(node)]
            self.trace.add(node, score=self.total[id(node)] / n, status="tree", visits=n)

    def result(self) -> SearchResult:
        ranked = sorted(
            self.results.values(), key=lambda e: (e[1].finish_reason == "stop", e[0], e[1].logprob), reverse=True
        )[: self.spec.num_return]
        if not ranked:  # no complete output reached: the most visited path, cut
            node = self.root
            while self.children.get(id(node)):
                node = max(self.children[id(node)], key=lambda c: self.visits.get(id(c), 0))
            node.finish_reason = node.finish_reason or "length"
            ranked = [(self.total.get(id(node), 0.0) / max(self.visits.get(id(node), 0), 1), node)]
        for value, leaf in ranked:
            self.trace.add(leaf, score=value, status="finished")
        return SearchResult.ranked(ranked, self.trace, self.stats)


def _params(spec: MCTS) -> dict:
    step = spec.step if isinstance(spec.step, str) else spec.step.pattern
    return {"simulations": spec.simulations, "c_puct": spec.c_puct, "step": step, "rollout": spec.rollout}
