"""Sequential Monte Carlo (SMC) from the model conditioned on the constraint, with the masked or the
adaptive weighted rejection sampling (AWRS) proposal.

References: Lew et al., "Sequential Monte Carlo Steering of Large Language Models using Probabilistic
Programs" (arXiv 2306.03081); Lipkin et al., "Fast Controlled Generation from Language Models with
Adaptive Weighted Rejection Sampling" (arXiv 2504.05410).

Target: p(x | x satisfies C and ends within max_tokens), twisted by the potentials: proportional to
p(x) * prod_k phi_k(x) over the outputs x the constraint accepts. p is the model's own (unprocessed)
probability of the whole output, its end included: end-of-sequence is a token like any other when drawn,
and where the grammar admits nothing more (the output ends without drawing it) the weight multiplies in
the model's probability of ending there, p(end-of-sequence | x), from one more forward of the finished
particle. Tokens the grammar forces (jump-forward) count with their model probability (so with
`jump_forward` the target holds only the forced tokenization of forced text). `enumerate_outputs` computes
this target exactly for a small language.
Masking each token and renormalising (plain constrained sampling) draws from another distribution, which
favours prefixes with many allowed continuations; SMC corrects that with importance weights.

One step: every live particle of every prompt is advanced by the one decoding step (search/rows.py), one
batched forward over the distinct nodes (resampled copies share their node: a shared prefix is forwarded
once), its token drawn by the proposal (a `rows.Proposal`, which sees the unmasked logits):
- "mask": the token from the masked, renormalised distribution; incremental weight Z_t, the allowed mass
  (exact; costs a full mask: the vocabulary's worth of constraint evaluations);
- "awrs": the vocabulary is visited in the order of sampling without replacement from the unmasked
  distribution (Gumbel top-k, with the particle's generator) and only visited tokens are checked with
  `State.allows`; the first allowed one is the token (exactly a draw from the masked distribution). The
  incremental weight is the paper's recursive estimate of Z_t: with R the mass left after the rejected
  tokens, R when the next token in the order is allowed too, else p(token). It is unbiased given the token
  (E[w | token] = Z_t), so the particle stays properly weighted. After `max_rejects` rejections (or with R
  below 1e-6) the step falls back to the full mask: the token from the masked distribution, the exact Z_t
  as weight, which keeps the estimate exact.
Forced tokens multiply in their probability once the next forward has computed it. Potentials (rewards or
checks, `rewards.Reward` or plain callables) twist the weights: after each step every advanced particle's
partial output is scored (one `score_batch` per potential and prompt); a score is log phi (-inf rejects),
and a particle's weight carries its current sum of scores, so the final weight holds phi of the output.

Resampling: after each step, when the effective sample size (sum w)^2 / sum w^2 of a prompt's particles
(finished ones included) falls below `ess_threshold * particles`, they are resampled ("multinomial", or
"systematic": one uniform, evenly spaced) with the prompt's own generator and their weights reset to equal.
`log_z` sums the log mean incremental weight at each resampling and at the end: exp(log_z) is an unbiased
estimate of the constrained (and twisted) mass sum_{x in C} p(x) prod phi(x).

Budget: particles are not steered to close within `max_tokens` (budget steering would bias the target and
has no cheap correction): a particle cut by "length" gets weight 0, and when all of a prompt's particles
end with weight 0, they come back with uniform weights and `log_z = -inf`.

Result: the particles, ranked by normalised weight (ties by slot), each hypothesis's `.weight` (and score)
its weight; with `draws=k`, k outputs drawn from the weighted set (with replacement, by the prompt's
generator), in draw order, each of weight 1/k: the server's `n` choices and `sd.Sample(exact=True)`.
Stats (`SMCStats`): `log_z`, `ess` (after each step, before resampling), `resamples`,
`constraint_evaluations` (tokens the proposals checked) and `full_mask_evaluations` (the vocabulary size per
node proposed from: what masking would cost).

Determinism: particle j of prompt i draws with its own generator seeded by task_seed(seed, "smc", i, j),
and prompt i resamples with task_seed(seed, "smc-resample", i): a seed gives the same result. All prompts'
particles run in this process, batched together (a Work's executor runs none of it: not distributable).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from searchdec.rewards.base import Reward, as_reward
from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int, text_of
from searchdec.search.rows import Decoder, Proposal, Row, Rule, constrain, forward, generator
from searchdec.search.tasks import task_seed
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Work

PROPOSALS = ("awrs", "mask")
RESAMPLING = ("multinomial", "systematic")
MIN_MASS_LEFT = 1e-6  # AWRS falls back to the full mask below it: 1 - (rejected mass) loses precision


@dataclass
class SMCStats(SearchStats):
    """What an SMC run cost and found, per prompt (see the module docstring)."""

    log_z: float = 0.0
    ess: list[float] = field(default_factory=list)
    resamples: int = 0
    constraint_evaluations: int = 0
    full_mask_evaluations: int = 0


@dataclass(eq=False)
class Particle(Row):
    """A row with its importance weight: log w = log p(tokens) + correction + twist, where `correction`
    sums log(increment) - log p(drawn token) over the steps (forced tokens keep their log p) and `twist` is
    the potentials' current log phi; `base` is log w at the last resampling."""

    correction: float = 0.0
    twist: float = 0.0
    base: float = 0.0
    increment: float = 0.0  # the proposal's log incremental weight for the token it drew last

    @property
    def log_weight(self) -> float:
        if self.node.finish_reason == "length":
            return -math.inf
        return self.node.logprob + self.correction + self.twist


class MaskProposal(Proposal):
    """The token from the masked, renormalised distribution; incremental weight: the allowed mass."""

    def propose(self, logits: torch.Tensor, rows: Sequence[Row]) -> list[int]:
        logp = logits.double().log_softmax(dim=-1)
        nodes: dict[int, int] = {}
        for k, row in enumerate(rows):
            if id(row.node) not in nodes:
                nodes[id(row.node)] = k
                if row.node.state is not None:
                    row.stats.constraint_evaluations += logp.shape[-1]
                    row.stats.full_mask_evaluations += logp.shape[-1]
        firsts = list(nodes.values())
        masked = constrain(logp[firsts], [rows[k].node for k in firsts])
        at = {key: i for i, key in enumerate(nodes)}
        tokens = []
        for row in rows:
            scores = masked[at[id(row.node)]]
            row.increment = float(scores.logsumexp(dim=-1))
            tokens.append(int(torch.multinomial(scores.exp(), 1, generator=row.generator)))
        return tokens


class AWRSProposal(Proposal):
    """Adaptive weighted rejection sampling (see the module docstring)."""

    def __init__(self, max_rejects: int) -> None:
        self.max_rejects = max_rejects

    def propose(self, logits: torch.Tensor, rows: Sequence[Row]) -> list[int]:
        logp = logits.double().log_softmax(dim=-1)
        vocab = logp.shape[-1]
        noise = torch.stack(
            [torch.rand(vocab, generator=row.generator, device=logp.device, dtype=torch.float64) for row in rows]
        )
        keys = logp - torch.log(-torch.log(noise))  # + Gumbel noise: descending keys = without replacement
        order = torch.topk(keys, min(vocab, self.max_rejects + 1), dim=-1).indices
        values = logp.gather(-1, order)
        checked: dict[int, dict[int, bool]] = {}  # per node: tokens checked this step
        seen: set[int] = set()
        tokens = []
        for k, row in enumerate(rows):
            state = row.node.state
            if state is None:
                row.increment = 0.0
                tokens.append(int(order[k, 0]))
                continue
            if id(row.node) not in seen:
                seen.add(id(row.node))
                row.stats.full_mask_evaluations += vocab
            cache = checked.setdefault(id(row.node), {})

            def allows(token: int, row=row, state=state, cache=cache) -> bool:
                if token not in cache:
                    cache[token] = state.allows(token)
                    row.stats.constraint_evaluations += 1
                return cache[token]

            tokens.append(self._walk(row, logp[k], order[k].tolist(), values[k].tolist(), allows))
        return tokens

    def _walk(self, row: Row, logp: torch.Tensor, order: list[int], values: list[float], allows) -> int:
        """The first allowed token in `order`, its incremental weight set on the row."""
        rejected = 0.0
        for k, token in enumerate(order):
            if k >= self.max_rejects or 1.0 - rejected < MIN_MASS_LEFT or values[k] == -math.inf:
                break
            if allows(token):
                last = k + 1 == logp.numel() or values[k + 1] == -math.inf
                row.increment = math.log1p(-rejected) if last or allows(order[k + 1]) else values[k]
                return token
            rejected += math.exp(values[k])
        return self._exact(row, logp)

    @staticmethod
    def _exact(row: Row, logp: torch.Tensor) -> int:
        """The full mask: a draw from the masked distribution (the rejected tokens are not in it), the
        exact allowed mass as weight."""
        vocab = logp.numel()
        row.stats.constraint_evaluations += vocab
        masked = logp.masked_fill(~row.node.state.allowed_tokens(vocab).to(logp.device), -math.inf)
        row.increment = float(masked.logsumexp(dim=-1))
        return int(torch.multinomial(masked.exp(), 1, generator=row.generator))


@dataclass
class _Population:
    """One prompt's particles."""

    root: Node
    prompt: str
    particles: list[Particle]
    generator: torch.Generator
    stats: SMCStats


@dataclass(frozen=True)
class SMC(Search):
    """Sequential Monte Carlo from p(x | constraint), twisted by `potentials` (see the module docstring)."""

    particles: int = 16
    proposal: str = "awrs"
    resample: str = "multinomial"
    ess_threshold: float = 0.5
    potentials: Sequence[Reward | Callable] = ()
    seed: int | None = None
    draws: int | None = None  # None: return the weighted particles; k: k draws from them, weight 1/k each
    max_rejects: int = 64  # AWRS rejections before the full mask

    def __post_init__(self) -> None:
        check_positive_int("particles", self.particles)
        if self.proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {', '.join(map(repr, PROPOSALS))}, got {self.proposal!r}")
        if self.resample not in RESAMPLING:
            raise ValueError(f"resample must be one of {', '.join(map(repr, RESAMPLING))}, got {self.resample!r}")
        threshold = self.ess_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"ess_threshold must be a number within [0, 1], got {threshold!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(self.seed).__name__}")
        if self.draws is not None:
            check_positive_int("draws", self.draws)
        check_positive_int("max_rejects", self.max_rejects)
        if isinstance(self.potentials, (str, bytes)) or not isinstance(self.potentials, Sequence):
            raise TypeError(f"potentials must be a list of rewards or callables, got {type(self.potentials).__name__}")
        object.__setattr__(self, "potentials", tuple(as_reward(p) for p in self.potentials))

    @property
    def n(self) -> int:
        return self.draws if self.draws is not None else self.particles

    @property
    def width(self) -> int:
        """Rows one prompt decodes at a time (the server sizes its groups of searches by it)."""
        return self.particles

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        model = work.model
        base = self.seed if self.seed is not None else random.SystemRandom().randrange(2**62)
        rule = Rule(work.stopping, work.jump_forward)
        proposal = AWRSProposal(self.max_rejects) if self.proposal == "awrs" else MaskProposal()
        populations = []
        for i, root in enumerate(roots):
            stats = SMCStats()
            particles = [
                Particle(root, root, len(root.new_tokens), rule, proposal, gen, stats, owner=i)
                for gen in (generator(task_seed(base, "smc", i, j), model.device) for j in range(self.particles))
            ]
            resampling = torch.Generator().manual_seed(task_seed(base, "smc-resample", i))
            populations.append(_Population(root, model.decode(list(root.new_tokens)), particles, resampling, stats))
        decoder = Decoder(model)
        try:
            self._twist(work, populations, [p for pop in populations for p in pop.particles])
            if work.stopping.max_tokens <= 0:
                for pop in populations:
                    for particle in pop.particles:
                        particle.node = particle.start.child((), ())
                        decoder.cut(particle)
            while True:
                active = [p for pop in populations for p in pop.particles if not p.ended]
                if not active:
                    break
                self._step(work, decoder, populations, active)
            return [self._result(model, pop) for pop in populations]
        finally:
            decoder.release_all()

    def _step(self, work: Work, decoder: Decoder, populations: list[_Population], active: list[Particle]) -> None:
        """Advance the live particles one token, weigh them, and resample where the ESS is low."""
        decoder.advance(active)
        for particle in active:
            particle.correction += particle.increment - particle.node.token_logprobs[0]
        self._close(work.model, [p for p in active if p.ended and p.node.finish_reason == "stop"])
        self._twist(work, populations, active)
        for pop in populations:
            weights = self._incremental(pop)
            if not torch.isfinite(weights).any():  # every particle has weight 0: nothing left to steer
                for particle in pop.particles:
                    if not particle.ended:
                        decoder.cut(particle)
                continue
            ess = float(weights.logsumexp(0) * 2 - (2 * weights).logsumexp(0))
            pop.stats.ess.append(math.exp(ess))
            if math.exp(ess) < self.ess_threshold * self.particles:
                self._resample(pop, weights)
        decoder.keep_only([p.node for pop in populations for p in pop.particles if not p.ended])

    @staticmethod
    def _close(model, ended: list[Particle]) -> None:
        """One forward of the particles that just ended with forced tokens (their log-probabilities) or
        where the grammar ended them (the model's probability of ending there joins their weight)."""
        eos = sorted(model.eos_token_ids)
        closed = [
            p for p in ended if p.node.state is not None and p.node.state.finished and p.node.new_tokens[-1] not in eos
        ]
        shut = {id(p) for p in closed}
        nodes = [p.node for p in closed] + [p.node for p in ended if p.node.forced and id(p) not in shut]
        if not nodes:
            return
        logits = forward(model, nodes)
        for k, particle in enumerate(closed):
            particle.correction += float(logits[k].double().log_softmax(-1)[eos].logsumexp(0))

    def _twist(self, work: Work, populations: list[_Population], moved: list[Particle]) -> None:
        """Each moved particle's twist: the sum of its potentials' scores (log phi) of its partial output."""
        if not self.potentials:
            return
        ids = {id(p) for p in moved}
        for pop in populations:
            mine = [p for p in pop.particles if id(p) in ids]
            if not mine:
                continue
            texts = [text_of(work.model, p.node) for p in mine]
            totals = [0.0] * len(mine)
            for potential in self.potentials:
                for k, score in enumerate(work.score(potential, pop.prompt, texts)):
                    totals[k] += score
            pop.stats.reward_calls += len(texts) * len(self.potentials)
            for particle, total in zip(mine, totals):
                particle.twist = total

    @staticmethod
    def _incremental(pop: _Population) -> torch.Tensor:
        """Each particle's log weight since the last resampling."""
        return torch.tensor([p.log_weight - p.base for p in pop.particles], dtype=torch.float64)

    def _resample(self, pop: _Population, weights: torch.Tensor) -> None:
        n = len(pop.particles)
        probs = (weights - weights.logsumexp(0)).exp()
        if self.resample == "multinomial":
            ancestors = torch.multinomial(probs, n, replacement=True, generator=pop.generator)
        else:
            start = torch.rand(1, generator=pop.generator, dtype=torch.float64)
            cumulative = probs.cumsum(0)
            cumulative[-1] = 1.0
            ancestors = torch.searchsorted(cumulative, (start + torch.arange(n, dtype=torch.float64)) / n, right=True)
            ancestors = ancestors.clamp(max=n - 1)
        pop.stats.log_z += float(weights.logsumexp(0)) - math.log(n)
        pop.stats.resamples += 1
        snapshot = [(p.node, p.ended, p.correction, p.twist, p.log_weight) for p in pop.particles]
        for particle, a in zip(pop.particles, sorted(ancestors.tolist())):
            particle.node, particle.ended, particle.correction, particle.twist, particle.base = snapshot[a]

    def _result(self, model, pop: _Population) -> SearchResult:
        weights = self._incremental(pop)
        n = len(pop.particles)
        if torch.isfinite(weights).any():
            pop.stats.log_z += float(weights.logsumexp(0)) - math.log(n)
            normalised = (weights - weights.logsumexp(0)).exp()
        else:
            pop.stats.log_z = -math.inf
            normalised = torch.full((n,), 1.0 / n, dtype=torch.float64)
        if self.draws is None:
            order = sorted(range(n), key=lambda k: (-float(normalised[k]), k))
            chosen = [(float(normalised[k]), pop.particles[k].node) for k in order]
        else:
            picks = torch.multinomial(normalised, self.draws, replacement=True, generator=pop.generator).tolist()
            chosen = [(1.0 / self.draws, pop.particles[k].node) for k in picks]
        trace = Trace("smc", {"particles": self.particles, "proposal": self.proposal}, model.decode)
        for weight, leaf in chosen:
            trace.add(leaf, score=weight, status="finished")
        result = SearchResult.ranked(chosen, trace, pop.stats)
        result.weights = [weight for weight, _ in chosen]
        return result


def enumerate_outputs(
    model, prompt_tokens: Sequence[int], constraint, max_tokens: int, jump_forward: bool = True
) -> dict[tuple[int, ...], tuple[float, float]]:
    """Every output a constraint (a spec or a compiled Constraint) accepts within `max_tokens` after
    `prompt_tokens`: {generated tokens: (log-probability under SMC's target, unnormalised: the model's,
    the end included; log-probability under plain masked sampling)}. The exact reference for a small
    language (tests, benchmarks/smc.py): it forwards one node at a time, every tokenization of every output."""
    compiled = constraint.compile(model) if hasattr(constraint, "compile") else constraint
    eos = sorted(model.eos_token_ids)
    root = Node(tuple(prompt_tokens), state=compiled.start())
    made, found = [root], {}

    def logp(node: Node) -> torch.Tensor:
        return model.logits([node])[0].double().log_softmax(-1)

    def walk(node: Node, tokens: tuple[int, ...], lp: float, lq: float) -> None:
        scores = logp(node)
        allowed = node.state.allowed_tokens(model.vocab_size).to(scores.device)
        mass = float(scores.masked_fill(~allowed, -math.inf).logsumexp(-1))
        for token in allowed.nonzero().flatten().tolist():
            child = Node((token,), node, state=node.state.advance(token))
            made.append(child)
            path, p, q = (*tokens, token), lp + float(scores[token]), lq + float(scores[token]) - mass
            if token in eos:
                found[path] = (p, q)
                continue
            if jump_forward and not child.state.finished:
                for forced in child.state.forced[: max_tokens - len(path)]:
                    p += float(logp(child)[forced])
                    child = Node((forced,), child, state=child.state.advance(forced))
                    made.append(child)
                    path = (*path, forced)
            if child.state.finished:
                found[path] = (p + float(logp(child)[eos].logsumexp(0)), q)
            elif len(path) < max_tokens:
                walk(child, path, p, q)

    try:
        walk(root, (), 0.0, 0.0)
    finally:
        for node in made:
            model.cache.discard(node)
    return found
