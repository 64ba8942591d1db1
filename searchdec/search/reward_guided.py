"""Reward-guided speculative decoding (RSD): the draft writes each step, a reward judges it, and
the target rewrites only the steps the reward rejects.

Reference: Liao et al., "Reward-Guided Speculative Decoding for Efficient LLM Reasoning"
(arXiv 2501.19324). Semantics, per step: the draft model continues the accepted text until the
step delimiter (default a blank line), the end of sequence, or `max_step_tokens`; the reward scores
the step in context (`reward.score_steps(prompt, steps)[-1]`, so a process reward model sees every
step so far); a score >= `threshold` keeps the draft's step, otherwise the target model writes the
step instead from the same accepted text. The loop ends when a step ends the sequence (end of
sequence token, or no delimiter) or the output reaches `max_tokens` target tokens. Steps are text,
so the draft and the target may use different tokenizers (each reads the prompt through its own
chat template and continues the accepted text as the start of its answer).
Each prompt's `Generation.stats` (a `RewardGuidedStats`) reports steps, steps from the draft, and
target calls avoided (the forward passes the target would have made for the draft's accepted tokens).
The answer's tokens are the target's tokenization of its text, with their log-probabilities under
the target (one teacher-forced forward). A grammar constraint is not supported (steps are free text).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from searchdec.models.model import Model
from searchdec.rewards.base import Reward, as_reward
from searchdec.search.base import Search, SearchResult, SearchStats
from searchdec.search.rows import Decoder, Row, Rule, Stopping, decode_rows
from searchdec.search.sampling import Sample
from searchdec.search.tree import Node
from searchdec.search.work import Work


@dataclass
class RewardGuidedStats(SearchStats):
    steps: int = 0
    draft_steps: int = 0
    draft_tokens: int = 0
    target_tokens: int = 0
    scores: list[float] = field(default_factory=list)

    @property
    def draft_fraction(self) -> float:
        return self.draft_steps / self.steps if self.steps else 0.0

    @property
    def target_calls_avoided(self) -> int:
        """Target forwards saved: one per token the draft wrote and the reward kept."""
        return self.draft_tokens


@dataclass(frozen=True)
class RewardGuidedSpeculative(Search):
    """`sd.RewardGuidedSpeculative(draft=small_model, reward=..., threshold=0.7)`; the model passed
    to `sd.generate` is the target."""

    draft: object
    reward: object
    threshold: float = 0.5
    step: str = "\n\n"
    max_step_tokens: int = 96
    sample: Sample | None = None
    n: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.draft, Model):
            raise TypeError(f"draft must be an sd.Model, got {type(self.draft).__name__}")
        object.__setattr__(self, "reward", as_reward(self.reward))
        if not isinstance(self.reward, Reward):
            raise TypeError("reward must be a Reward or a callable")
        if not self.step:
            raise ValueError("step must be a non-empty delimiter")
        if self.max_step_tokens < 1:
            raise ValueError(f"max_step_tokens must be >= 1, got {self.max_step_tokens}")

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        if any(root.state is not None for root in roots):
            raise ValueError("RewardGuidedSpeculative writes free-text steps: drop constraint=")
        target, stopping = work.model, work.stopping
        results = []
        for root in roots:
            prompt = root.prompt if root.prompt is not None else target.decode(list(root.new_tokens))
            stats = RewardGuidedStats()
            text, reason = self.run_text(target, prompt, stopping.max_tokens, stopping.stop, stats)
            answer = target.encode(text, add_special_tokens=False)
            if reason == "stop":
                answer = answer + [min(target.eos_token_ids)]
            leaf = root.child(tuple(answer), tuple(_logprobs(target, root, answer)))
            leaf.finish_reason = reason
            stats.generated_tokens = leaf.depth
            results.append(SearchResult([leaf], [None], None, stats))
        return results

    def run_text(
        self, target, prompt, max_tokens: int, stop: tuple[str, ...] = (), stats: RewardGuidedStats | None = None
    ) -> tuple[str, str]:
        """The answer text and its finish reason ("stop" or "length"); `stats` counts the steps."""
        stats = RewardGuidedStats() if stats is None else stats
        question = _question_text(prompt)
        steps: list[str] = []
        used = 0
        while used < max_tokens:
            budget = min(self.max_step_tokens, max_tokens - used)
            text, tokens, ended = self._step(self.draft, prompt, "".join(steps), budget, stop)
            score = self.reward.score_steps(question, [*steps, text])[-1]
            stats.scores.append(score)
            stats.steps += 1
            if score >= self.threshold:
                stats.draft_steps += 1
                stats.draft_tokens += tokens
                used += len(target.encode(text, add_special_tokens=False))
            else:
                text, tokens, ended = self._step(target, prompt, "".join(steps), budget, stop)
                stats.target_tokens += tokens
                used += tokens
            steps.append(text)
            answer = "".join(steps)
            cuts = [answer.find(s) for s in stop if s in answer]
            if cuts:
                return answer[: min(cuts)], "stop"
            if ended:
                return answer, "stop"
        return "".join(steps), "length"

    def _step(self, model, prompt, answer_so_far: str, budget: int, stop: tuple[str, ...]) -> tuple[str, int, bool]:
        """One step by `model`: its text (with the delimiter, if it ended there), its token count, and
        whether the answer ended (end of sequence). A stop string also ends the step (the caller
        cuts the answer there)."""
        ids = _prompt_ids(model, prompt) + (
            model.encode(answer_so_far, add_special_tokens=False) if answer_so_far else []
        )
        model.check_prompt_length(len(ids))
        stopping = Stopping(budget, model.eos_token_ids, (self.step, *stop), model.context_window)
        root = Node(tuple(ids))
        generator = self.sample.generator(model.device) if self.sample is not None else None
        row = Row(root, root, len(ids), Rule(stopping), self.sample, generator)
        try:
            leaf = decode_rows(Decoder(model), [row])[0]
        finally:
            model.cache.discard(root)
        tokens, _ = leaf.generated()
        ended = bool(tokens) and tokens[-1] in model.eos_token_ids
        text = model.decode(tokens[:-1] if ended else tokens)
        cut = text.find(self.step)
        if cut >= 0:
            text = text[: cut + len(self.step)]
        return text, len(tokens), ended


def _question_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt if m.get("role") == "user")


def _prompt_ids(model, prompt) -> list[int]:
    """The prompt as `model` reads it: its chat template for messages, its tokenizer for text."""
    if isinstance(prompt, str):
        return model.encode(prompt)
    return model.apply_chat_template(prompt)


def _logprobs(target, root: Node, answer: list[int]) -> list[float]:
    """Log-probabilities of `answer` under the target after `root`, in one teacher-forced forward."""
    if not answer:
        return []
    node = Node(tuple(answer), root)
    try:
        rows = target.logits_last([node], len(answer) + 1)[0].log_softmax(-1)
    finally:
        target.cache.discard(node)
        target.cache.discard(root)
    return rows[torch.arange(len(answer)), torch.tensor(answer)].tolist()
