"""Model-based rewards: process reward models, outcome reward models, and self-evaluation.

`ProcessRewardModel` scores each step of a solution. Two kinds of PRM checkpoints exist:
- step-tag PRMs (Math-Shepherd, Wang et al. 2024, arXiv 2312.08935): a causal LM reads the question
  and the steps, each followed by a tag token; at each tag, the probability of the "good" token
  against the "bad" one (softmax over the two) is that step's score;
- token-classification PRMs: a head labels the last token of each step; the step's score is the
  probability of the positive label.
The steps are scored in one forward pass per solution, batched over solutions.
`OutcomeRewardModel`: a sequence-classification model's score for the whole (prompt, output): the
positive label's probability (two labels) or the single logit (a regression head).
`SelfEvaluation`: the policy model itself is asked a verification question about its output; the
score is P("Yes") / (P("Yes") + P("No")) at the answer position (as in self-evaluation guided beam
search, Xie et al. 2023, arXiv 2305.00633).
Any transformers model works; tests use tiny random models built from a config (no hub).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from searchdec.rewards.base import Reward


class ProcessRewardModel(Reward):
    def __init__(
        self,
        model,
        tokenizer,
        *,
        kind: str = "step_tag",
        step_tag: str = " ки",
        good: str = "+",
        bad: str = "-",
        positive_label: int = 1,
        separator: str = "\n",
    ) -> None:
        super().__init__()
        if kind not in ("step_tag", "token_classification"):
            raise ValueError(f"kind must be 'step_tag' or 'token_classification', got {kind!r}")
        self.model, self.tokenizer, self.kind = model.eval(), tokenizer, kind
        self.step_tag, self.separator, self.positive_label = step_tag, separator, positive_label
        if kind == "step_tag":
            self.good_id, self.bad_id = (_single_token(tokenizer, text) for text in (good, bad))

    def score_steps(self, prompt: str, steps: Sequence[str]) -> list[float]:
        return self.score_solutions([prompt], [list(steps)])[0]

    def score_solutions(self, prompts: Sequence[str], solutions: Sequence[Sequence[str]]) -> list[list[float]]:
        """Per-step scores of each (prompt, steps) pair, one padded batch."""
        encoded = [self._encode(p, s) for p, s in zip(prompts, solutions)]
        width = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (ids, _) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        scores = []
        for row, (_, positions) in enumerate(encoded):
            if self.kind == "step_tag":
                # The tag token's own position predicts the good/bad token after it.
                pair = logits[row, positions][:, [self.good_id, self.bad_id]]
                scores.append(pair.softmax(-1)[:, 0].tolist())
            else:
                scores.append(logits[row, positions].softmax(-1)[:, self.positive_label].tolist())
        return scores

    def _encode(self, prompt: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of prompt + steps, and the position that scores each step."""
        ids = list(self.tokenizer(prompt + self.separator, add_special_tokens=True)["input_ids"])
        positions = []
        for step in steps:
            text = step + (self.step_tag if self.kind == "step_tag" else "") + self.separator
            piece = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            ids += piece
            end = len(ids) - len(self.tokenizer(self.separator, add_special_tokens=False)["input_ids"]) - 1
            positions.append(end)
        return ids, positions

    def _score(self, prompts, outputs):
        """A whole output's score: its last step's (steps split on the separator)."""
        solutions = [[s for s in o.split(self.separator) if s.strip()] or [o] for o in outputs]
        return [steps[-1] for steps in self.score_solutions(prompts, solutions)]


class OutcomeRewardModel(Reward):
    def __init__(self, model, tokenizer, *, positive_label: int = 1, template: str = "{prompt}\n{output}") -> None:
        super().__init__()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.positive_label, self.template = positive_label, template

    def _score(self, prompts, outputs):
        texts = [self.template.format(prompt=p, output=o) for p, o in zip(prompts, outputs)]
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        batch = self.tokenizer(texts, return_tensors="pt", padding=True)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
        if logits.shape[-1] == 1:
            return logits[:, 0].tolist()
        return logits.softmax(-1)[:, self.positive_label].tolist()


class SelfEvaluation(Reward):
    """P(Yes) of the policy model asked whether its output is correct."""

    QUESTION = "Question: {prompt}\nProposed answer: {output}\nIs the proposed answer correct? Answer Yes or No."

    def __init__(self, model, *, question: str = QUESTION, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.model, self.question = model, question
        self.yes = _first_tokens(model, yes)
        self.no = _first_tokens(model, no)

    def _score(self, prompts, outputs):
        roots = []
        for prompt, output in zip(prompts, outputs):
            messages = [{"role": "user", "content": self.question.format(prompt=prompt, output=output)}]
            if getattr(self.model.tokenizer, "chat_template", None):
                ids = self.model.apply_chat_template(messages)
            else:
                ids = self.model.encode(messages[0]["content"] + "\nAnswer:")
            roots.append(_Prompt(tuple(ids)))
        logits = self.model.logits(roots)
        for root in roots:
            self.model.cache.discard(root)
        probs = logits.float().softmax(-1)
        yes = probs[:, self.yes].sum(-1)
        no = probs[:, self.no].sum(-1)
        return (yes / (yes + no).clamp_min(1e-12)).tolist()


def _single_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{text!r} must be a single token for this tokenizer, got {len(ids)} tokens")
    return ids[0]


def _first_tokens(model, word: str) -> list[int]:
    """First tokens of `word` as an answer may begin it: bare and after a space."""
    return sorted({model.encode(form, add_special_tokens=False)[0] for form in (word, " " + word)})


@dataclass(eq=False)
class _Prompt:
    """A prompt as the model's forward takes it (the models layer's TokenNode): no parent."""

    new_tokens: tuple[int, ...]
    parent: None = None
