"""The `search` request extension: a registry from algorithm names to search specs.

A request names an algorithm and its parameters side by side:
`"search": {"algorithm": "beam", "width": 4, "length_penalty": 1.0}`. Each entry checks its own
parameters (an unknown one is a 400 naming it) and builds the spec the engine runs. Entries marked
`stepwise` (greedy, sample) decode inside the server's shared continuous batch, one token per
hypothesis per step. The others need the whole search loop; the engine's worker runs each as one
search call, advancing the batch one step before each of the search's forwards (the model and its
prefix cache belong to that thread).

The request's `n` is the number of choices returned: beam searches return their `n` best hypotheses
(`num_return`), best-of-N its `n` best samples. Grammar constraints (`response_format`, `tools`,
`structured_outputs`) hold for every searched hypothesis, as they do for decoded ones.

Algorithms and parameters (defaults in brackets):
- `greedy`: the logit processors (below).
- `sample`: temperature [1.0], top_p [1.0], top_k [none], min_p [0.0], seed, and the logit processors.
- the logit processors (search/processors.py), taken by greedy, sample and best_of_n: frequency_penalty
  and presence_penalty [0; within [-2, 2]], logit_bias [none; token id (a JSON string) -> bias, clamped
  to [-100, 100] as vLLM's `SamplingParams.from_optional` does], repetition_penalty [1.0; > 0],
  no_repeat_ngram_size [0], typical_p [1.0; (0, 1]], epsilon_cutoff and eta_cutoff [0; [0, 1)].
- `beam` (transformers' beam search): width [max(4, n)], length_penalty [1.0],
  early_stopping [false; true or "never"], patience [1.0].
- `diverse_beam` (Hamming diversity between groups): width [groups * max(2, ceil(n / groups))],
  groups [2], diversity_penalty [0.5], length_penalty [1.0], early_stopping [false].
- `best_first_beam` (returns what beam with length_penalty 0 returns, with fewer expansions):
  width [max(4, n)].
- `best_of_n`: n [max(8, request n)] samples, reward ["logprob"], aggregate ["max"; "weighted",
  "majority"], temperature [0.8], top_p, top_k, min_p, seed, the logit processors. Built-in rewards, by name, each the
  `rewards.*` a script would use: "logprob", `rewards.MeanLogprob()`, the sample's mean token
  log-probability under the model (OpenAI's legacy `best_of` criterion; free: no extra forward),
  reported as its exponential, the geometric-mean token probability; "self_eval",
  `rewards.SelfEvaluation(model)`, the model asked whether its answer to the request's last user
  message (the prompt itself for a completion) is correct, P(Yes) / (P(Yes) + P(No)) (one extra
  batched forward); "grounding", `rewards.Grounding() + 0.01 * rewards.MeanLogprob()`, the fraction of
  a tool call's argument values the conversation supports (its tools read from the prompt's listing),
  ties broken by likelihood — for requests with `tools`; "none", no reward (only with aggregate
  "majority": self-consistency). A JSON-validity reward is not offered: under `response_format` the
  grammar already makes every finished sample valid, so it could not tell them apart.
- `treebon` (TreeBoN, `sd.TreeBoN`: best-of-N grown in segments, the low-reward partial candidates
  rejected each round): n [max(8, request n)], branching [2], segment [16 tokens], rounds [3],
  reward ["logprob"; "self_eval", "grounding": the built-in rewards above, scored on partial text],
  step [none; a delimiter that also ends a segment], temperature [0.8], top_p, top_k, min_p, seed,
  the logit processors.
- `contrastive` (contrastive decoding, `sd.Contrastive`, greedy over the scores): layers (required:
  the amateur is the served model's first `layers` decoder layers, its final norm and LM head; the
  server holds one model), alpha [0.1], beta [none: Li et al.'s log p_e - log p_a; a number: O'Brien
  & Lewis's (1 + beta) l_e - beta l_a]. One choice (n = 1).
- `mbr` (minimum Bayes risk): n [max(8, request n)] samples ranked by their mean utility against the
  others, utility ["exact": the extracted final answers match; "chrf", "f1"], answer [the last
  number; a regex whose last match, or first group, is the answer, only with "exact"], weights
  ["uniform"; "model"], temperature [1.0], top_p, top_k, min_p, seed [0]: `sd.MBR`.
- `smc` (sequential Monte Carlo from the model conditioned on the constraint, `sd.SMC`): particles [16;
  at most 64], proposal ["awrs"; "mask"], resample ["multinomial"; "systematic"], ess_threshold [0.5; within
  [0, 1]], seed, max_rejects [64]. The request's `n` choices are drawn from the weighted particles (each
  choice an output of the model's conditional distribution, not of masked sampling's).
- `priority` (priority sampling): the request's n unique outputs in order of the model's
  confidence, the first the greedy one, deterministic; branching [n - 1: exact]: `sd.PrioritySampling`.
- `speculative` (lossless: the greedy output, fewer target forwards): draft ["prompt_lookup"; "suffix":
  suffix-automaton drafts over the prompt and output], k [4; draft length, 1..64], drafts [1; up to 16
  drafts verified at once as a token tree]: `sd.Speculative`. One choice (n = 1).
- `lookahead` (lossless lookahead decoding, the greedy output): window [5], ngram [4], candidates [5],
  each 1..16 (ngram from 2): `sd.Lookahead`. One choice (n = 1).

Without a `search` field, `temperature` chooses: below 1e-5 (0 included) is greedy, anything else
samples (OpenAI's default temperature is 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from searchdec.rewards import Grounding, MeanLogprob, SelfEvaluation, Weighted
from searchdec.search.beam import Beam
from searchdec.search.best_first import BestFirstBeam
from searchdec.search.best_of_n import BestOfN
from searchdec.search.contrastive import Contrastive, EarlyExit, amateur_for
from searchdec.search.diverse_beam import DiverseBeam
from searchdec.search.lookahead import Lookahead
from searchdec.search.mbr import MBR
from searchdec.search.priority import PrioritySampling
from searchdec.search.processors import Processors
from searchdec.search.sampling import Greedy, Sample
from searchdec.search.smc import PROPOSALS, RESAMPLING, SMC
from searchdec.search.speculative import Speculative
from searchdec.search.treebon import TreeBoN
from searchdec.server.errors import bad_request

MIN_TEMPERATURE = 1e-5  # below it, logits / temperature overflow to inf (found by the fuzzer at 1e-300)
MAX_WIDTH = 64  # beams or samples of one request: one search holds the worker for its whole run
MAX_LENGTH_PENALTY = 20.0  # context_window ** 20 stays a finite float for any window below 1e15
MAX_PATIENCE = 16.0
MAX_DIVERSITY_PENALTY = 1e6
MAX_LOGIT_BIAS = 100.0  # OpenAI's range; vLLM clamps to it (vllm/sampling_params.py `SamplingParams.from_optional`)
PROCESSORS = (
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
)


@dataclass(frozen=True)
class SearchContext:
    """What an entry may need besides its parameters."""

    n: int  # choices the request returns
    model: object = None  # the served model (model-based rewards score with it)


@dataclass(frozen=True)
class SearchEntry:
    name: str
    params: tuple[str, ...]  # the parameters it accepts besides "algorithm"
    build: Callable[[dict[str, Any], SearchContext], Any]  # (parameters, context) -> a search spec
    stepwise: bool = True
    description: str = ""


REGISTRY: dict[str, SearchEntry] = {}


def register(entry: SearchEntry) -> None:
    if entry.name in REGISTRY:
        raise ValueError(f"search algorithm {entry.name!r} is already registered")
    REGISTRY[entry.name] = entry


def is_stepwise(search) -> bool:
    """Whether the engine decodes `search` inside its continuous batch (else: as one whole search)."""
    return isinstance(search, (Greedy, Sample))


def build(spec: dict[str, Any], context: SearchContext):
    """The search spec for a request's `search` field (`{"algorithm": ..., **parameters}`)."""
    name = spec.get("algorithm")
    entry = REGISTRY.get(name)
    if entry is None:
        known = ", ".join(sorted(REGISTRY))
        raise bad_request(f"unknown search algorithm {name!r}; available: {known}", "search.algorithm")
    params = {k: v for k, v in spec.items() if k != "algorithm"}
    unknown = sorted(set(params) - set(entry.params))
    if unknown:
        accepted = ", ".join(entry.params) or "none"
        hint = "; the request's n sets how many hypotheses come back" if "num_return" in unknown else ""
        raise bad_request(
            f"search algorithm {name!r} has no parameter {', '.join(map(repr, unknown))}; it accepts: {accepted}"
            + hint,
            f"search.{unknown[0]}",
        )
    try:
        return entry.build(params, context)
    except (TypeError, ValueError) as error:
        raise bad_request(f"search {name!r}: {error}", "search") from None


def _number(params: dict, key: str, kind=(int, float)):
    value = params.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        raise TypeError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {value!r}")
    return value


def _bounded(params: dict, key: str, default: float, low: float, high: float) -> float:
    """A float parameter within [low, high]: the searches raise length ** length_penalty and
    patience * width, which overflow (a 500, found by the fuzzer) far outside any useful range."""
    value = _number(params, key)
    value = default if value is None else float(value)
    if not low <= value <= high:
        raise ValueError(f"{key} must be within [{low:g}, {high:g}], got {value!r}")
    return value


def _width(params: dict, key: str, default: int, context: SearchContext) -> int:
    width = _number(params, key, int)
    width = default if width is None else width
    if width > MAX_WIDTH:
        raise ValueError(f"{key} must be at most {MAX_WIDTH} on this server, got {width}")
    if width < context.n:
        raise ValueError(f"{key} ({width}) must be >= the request's n ({context.n}): n hypotheses come back")
    return width


def processors(params: dict, context: SearchContext, prefix: str = "") -> dict[str, Any]:
    """The logit processor settings among `params` (set ones only), each checked alone so that an
    error names its field (`prefix` + name); `logit_bias` keys become token ids within the model's
    vocabulary and its biases are clamped to [-100, 100]."""
    settings: dict[str, Any] = {}
    for key in PROCESSORS:
        value = params.get(key)
        if value is None:
            continue
        if key == "logit_bias":
            value = _logit_bias(value, context, prefix + key)
        elif key == "no_repeat_ngram_size":
            value = _checked(params, key, prefix, int)
        else:
            value = float(_checked(params, key, prefix))
        try:
            Processors(**{key: value}).check_processors()
        except ValueError as error:
            raise bad_request(str(error), prefix + key) from None
        settings[key] = value
    return settings


def _checked(params: dict, key: str, prefix: str, kind=(int, float)):
    try:
        return _number(params, key, kind)
    except (TypeError, ValueError) as error:
        raise bad_request(str(error), prefix + key) from None


def _logit_bias(value, context: SearchContext, param: str) -> dict[int, float]:
    if not isinstance(value, dict):
        raise bad_request(f"logit_bias must map token ids to biases, got {type(value).__name__}", param)
    vocab = getattr(context.model, "vocab_size", None)
    table: dict[int, float] = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise bad_request(f"logit_bias keys must be token ids, got {key!r}", param) from None
        if token < 0 or (vocab is not None and token >= vocab):
            raise bad_request(f"logit_bias token id {token} is outside the vocabulary [0, {vocab})", param)
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise bad_request(f"logit_bias[{key!r}] must be a finite number, got {bias!r}", param)
        table[token] = min(MAX_LOGIT_BIAS, max(-MAX_LOGIT_BIAS, float(bias)))
    return table


def _greedy(params: dict, context: SearchContext) -> Greedy:
    # n > 1 greedy hypotheses are identical; the engine decodes them side by side
    return Greedy(**processors(params, context, "search."))


def _sample(params: dict, context: SearchContext, n: int | None = None, temperature: float = 1.0) -> Sample:
    for key in ("temperature", "top_p", "min_p"):
        _number(params, key)
    for key in ("top_k", "seed"):
        _number(params, key, int)
    top_k = params.get("top_k")
    if params.get("temperature") is not None and params["temperature"] < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be >= {MIN_TEMPERATURE} to sample; use the greedy algorithm for arg-max")
    return Sample(
        temperature=float(params.get("temperature", temperature)),
        top_k=None if top_k in (None, -1, 0) else top_k,
        top_p=float(params.get("top_p", 1.0)),
        min_p=float(params.get("min_p", 0.0)),
        n=context.n if n is None else n,
        seed=params.get("seed"),
        **processors(params, context, "search."),
    )


def _early_stopping(params: dict):
    value = params.get("early_stopping", False)
    if value is not True and value is not False and value != "never":
        raise ValueError(f'early_stopping must be true, false or "never", got {value!r}')
    return value


def _beam(params: dict, context: SearchContext) -> Beam:
    return Beam(
        width=_width(params, "width", max(4, context.n), context),
        length_penalty=_bounded(params, "length_penalty", 1.0, -MAX_LENGTH_PENALTY, MAX_LENGTH_PENALTY),
        early_stopping=_early_stopping(params),
        num_return=context.n,
        patience=_bounded(params, "patience", 1.0, 1e-3, MAX_PATIENCE),
    )


def _diverse_beam(params: dict, context: SearchContext) -> DiverseBeam:
    groups = _number(params, "groups", int) or 2
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    return DiverseBeam(
        width=_width(params, "width", groups * max(2, math.ceil(context.n / groups)), context),
        groups=groups,
        diversity_penalty=_bounded(params, "diversity_penalty", 0.5, 0.0, MAX_DIVERSITY_PENALTY),
        length_penalty=_bounded(params, "length_penalty", 1.0, -MAX_LENGTH_PENALTY, MAX_LENGTH_PENALTY),
        early_stopping=_early_stopping(params),
        num_return=context.n,
    )


def _best_first_beam(params: dict, context: SearchContext) -> BestFirstBeam:
    return BestFirstBeam(width=_width(params, "width", max(4, context.n), context), num_return=context.n)


REWARDS = ("logprob", "self_eval", "grounding", "none")
GROUNDING_TIE_BREAK = 0.01  # below the smallest step of a grounding fraction with up to 99 values


def _best_of_n(params: dict, context: SearchContext) -> BestOfN:
    samples = _width(params, "n", max(8, context.n), context)
    aggregate = params.get("aggregate", "max")
    reward = params.get("reward", "none" if aggregate == "majority" else "logprob")
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {', '.join(map(repr, REWARDS))}, got {reward!r}")
    if reward == "none" and aggregate != "majority":
        raise ValueError(f'aggregate {aggregate!r} ranks by a reward; choose "logprob", "self_eval" or "grounding"')
    sample = _sample({k: v for k, v in params.items() if k in _SAMPLING}, context, samples, temperature=0.8)
    return BestOfN(n=samples, reward=_scorer(reward, context), aggregate=aggregate, sample=sample)


def _scorer(reward: str, context: SearchContext):
    """The built-in reward named `reward` (REWARDS; "none": None)."""
    if reward == "logprob":
        return MeanLogprob()
    if reward == "grounding":
        return Weighted([(1.0, Grounding()), (GROUNDING_TIE_BREAK, MeanLogprob())])
    if reward == "self_eval":
        return SelfEvaluation(context.model)  # asks about the last user turn of the prompt it is given
    return None


def _treebon(params: dict, context: SearchContext) -> TreeBoN:
    samples = _width(params, "n", max(8, context.n), context)
    reward = params.get("reward", "logprob")
    if reward not in REWARDS or reward == "none":
        raise ValueError(f'reward must be "logprob", "self_eval" or "grounding", got {reward!r}')
    for key in ("branching", "segment", "rounds"):
        _number(params, key, int)
    step = params.get("step")
    if step is not None and not isinstance(step, str):
        raise TypeError(f"step must be a delimiter string, got {step!r}")
    sample = _sample({k: v for k, v in params.items() if k in _SAMPLING}, context, samples, temperature=0.8)
    return TreeBoN(
        n=samples,
        branching=params.get("branching", 2),
        segment=params.get("segment", 16),
        rounds=params.get("rounds", 3),
        reward=_scorer(reward, context),
        step=step,
        sample=sample,
    )


_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "seed", *PROCESSORS)


def _contrastive(params: dict, context: SearchContext) -> Contrastive:
    layers = _number(params, "layers", int)
    if layers is None:
        raise ValueError("layers is required: the amateur is the served model's first `layers` decoder layers")
    if context.n != 1:
        raise ValueError(f"contrastive decoding is greedy and returns one choice; n must be 1, got {context.n}")
    alpha, beta = _number(params, "alpha"), _number(params, "beta")
    search = Contrastive(EarlyExit(layers), alpha=0.1 if alpha is None else float(alpha), beta=beta)
    if context.model is not None:
        amateur_for(context.model, search.amateur)  # a depth the model lacks is a 400, not a failed search
    return search


def _mbr(params: dict, context: SearchContext) -> MBR:
    samples = _width(params, "n", max(8, context.n), context)
    sampling = {k: v for k, v in params.items() if k in _SAMPLING}
    sampling.setdefault("seed", 0)
    for key in ("utility", "weights", "answer"):
        if key in params and not isinstance(params[key], str):
            raise TypeError(f"{key} must be a string, got {params[key]!r}")
    return MBR(
        n=samples,
        utility=params.get("utility", "exact"),
        candidates=_sample(sampling, context, samples),
        weights=params.get("weights", "uniform"),
        answer=params.get("answer"),
    )


def _priority(params: dict, context: SearchContext) -> PrioritySampling:
    branching = _number(params, "branching", int)
    return PrioritySampling(n=context.n, branching=branching)


def _smc(params: dict, context: SearchContext) -> SMC:
    """Each parameter checked alone, so that an error names its field."""
    checked: dict[str, Any] = {}
    for key, low, high in (("particles", 1, MAX_WIDTH), ("max_rejects", 1, None), ("seed", None, None)):
        value = _checked(params, key, "search.", int)
        if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
            bound = f"within [{low}, {high}]" if high is not None else f">= {low}"
            raise bad_request(f"{key} must be {bound} on this server, got {value}", "search." + key)
        if value is not None:
            checked[key] = value
    for key, choices in (("proposal", PROPOSALS), ("resample", RESAMPLING)):
        value = params.get(key)
        if value is not None and value not in choices:
            raise bad_request(f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}", "search." + key)
        if value is not None:
            checked[key] = value
    threshold = _checked(params, "ess_threshold", "search.")
    if threshold is not None:
        if not 0 <= threshold <= 1:
            raise bad_request(f"ess_threshold must be within [0, 1], got {threshold!r}", "search.ess_threshold")
        checked["ess_threshold"] = float(threshold)
    return SMC(draws=context.n, **checked)


MAX_DRAFT = 64  # draft tokens per chain: one verifying forward holds the worker
MAX_TREE = 16  # drafts verified at once, window columns, pool candidates, n-gram length


def _small(params: dict, key: str, default: int, low: int, high: int) -> int:
    value = _number(params, key, int)
    value = default if value is None else value
    if not low <= value <= high:
        raise ValueError(f"{key} must be within [{low}, {high}], got {value!r}")
    return value


def _one_choice(name: str, context: SearchContext) -> None:
    if context.n != 1:
        raise ValueError(f"{name} decoding returns the one greedy output; n must be 1, got {context.n}")


def _speculative(params: dict, context: SearchContext) -> Speculative:
    _one_choice("speculative", context)
    draft = params.get("draft", "prompt_lookup")
    if draft not in ("prompt_lookup", "suffix"):
        raise ValueError(f'draft must be "prompt_lookup" or "suffix", got {draft!r}')
    k = _small(params, "k", 4, 1, MAX_DRAFT)
    return Speculative(draft=draft, k=k, drafts=_small(params, "drafts", 1, 1, MAX_TREE), max_k=max(16, k))


def _lookahead(params: dict, context: SearchContext) -> Lookahead:
    _one_choice("lookahead", context)
    return Lookahead(
        window=_small(params, "window", 5, 1, MAX_TREE),
        ngram=_small(params, "ngram", 4, 2, MAX_TREE),
        candidates=_small(params, "candidates", 5, 1, MAX_TREE),
    )


register(SearchEntry("greedy", PROCESSORS, _greedy, description="the most probable token at each step"))
register(
    SearchEntry(
        "sample",
        _SAMPLING,
        _sample,
        description="ancestral sampling with temperature, top-k, top-p, min-p and the logit processors, seeded",
    )
)
register(
    SearchEntry(
        "beam",
        ("width", "length_penalty", "early_stopping", "patience"),
        _beam,
        stepwise=False,
        description="beam search as transformers' num_beams; the n best hypotheses come back",
    )
)
register(
    SearchEntry(
        "diverse_beam",
        ("width", "groups", "diversity_penalty", "length_penalty", "early_stopping"),
        _diverse_beam,
        stepwise=False,
        description="group beam search with Hamming diversity between groups",
    )
)
register(
    SearchEntry(
        "best_first_beam",
        ("width",),
        _best_first_beam,
        stepwise=False,
        description="best-first beam search: beam's result with length_penalty 0, in fewer expansions",
    )
)
register(
    SearchEntry(
        "best_of_n",
        ("n", "reward", "aggregate", *_SAMPLING),
        _best_of_n,
        stepwise=False,
        description="n samples ranked by a built-in reward (logprob, self_eval, grounding) or by majority",
    )
)
register(
    SearchEntry(
        "contrastive",
        ("layers", "alpha", "beta"),
        _contrastive,
        stepwise=False,
        description="contrastive decoding against the model's own first layers (early exit) as the amateur",
    )
)
register(
    SearchEntry(
        "mbr",
        ("n", "utility", "answer", "weights", *_SAMPLING),
        _mbr,
        stepwise=False,
        description="minimum Bayes risk: n samples ranked by mean utility (exact answer, chrF, F1) against the others",
    )
)
register(
    SearchEntry(
        "priority",
        ("branching",),
        _priority,
        stepwise=False,
        description="priority sampling: n unique outputs, most confident branch first, the first greedy",
    )
)
register(
    SearchEntry(
        "smc",
        ("particles", "proposal", "resample", "ess_threshold", "seed", "max_rejects"),
        _smc,
        stepwise=False,
        description="sequential Monte Carlo: n draws from the model conditioned on the constraint (AWRS or masked)",
    )
)
register(
    SearchEntry(
        "speculative",
        ("draft", "k", "drafts"),
        _speculative,
        stepwise=False,
        description="lossless speculative decoding (prompt-lookup or suffix drafts, several as a token tree)",
    )
)
register(
    SearchEntry(
        "treebon",
        ("n", "branching", "segment", "rounds", "reward", "step", *_SAMPLING),
        _treebon,
        stepwise=False,
        description="TreeBoN: best-of-n grown in segments, low-reward branches rejected each round",
    )
)
register(
    SearchEntry(
        "lookahead",
        ("window", "ngram", "candidates"),
        _lookahead,
        stepwise=False,
        description="lossless lookahead decoding (Jacobi iterations and an n-gram pool, no draft model)",
    )
)
