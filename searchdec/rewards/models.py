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
search, Xie et al. 2023, arXiv 2305.00633). What it asks about is the question, not the prompt a
search hands it: when that prompt is a conversation rendered by the model's chat template (what a
script's chat messages and the server's requests become), the question is its last user turn; a
plain prompt is the question itself; `question=` fixes it. So a script and the server ask the same
question for the same conversation. The model is a loaded `Model` (pickled with the reward) or a
name or path for `searchdec.load`, loaded at the first score and pickled as the name, so an executor
ships the recipe and each worker loads the model once.
Any transformers model works; tests use tiny random models built from a config (no hub).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from searchdec.models.loading import load
from searchdec.models.model import Model
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
    """P(Yes) of the policy model asked whether its output answers the question correctly."""

    TEMPLATE = "Question: {question}\nProposed answer: {output}\nIs the proposed answer correct? Answer Yes or No."

    def __init__(
        self,
        model: Model | str | os.PathLike,
        *,
        question: str | None = None,
        template: str = TEMPLATE,
        yes: str = "Yes",
        no: str = "No",
    ) -> None:
        super().__init__()
        if question is not None and "{output}" in question:
            raise ValueError(
                "question= is the question asked about (fixed text); the verification prompt with {question} "
                "and {output} is template="
            )
        if "{output}" not in template:
            raise ValueError("template must contain {output} (and {question}, or {prompt}, for the question)")
        if isinstance(model, (str, os.PathLike)):
            self.model_name: str | None = os.fspath(model)
            self._model: Model | None = None
        else:
            self.model_name, self._model = None, model
        self.fixed_question, self.template, self.yes_word, self.no_word = question, template, yes, no
        self._loading = threading.Lock()
        if self._model is not None:
            self._words  # noqa: B018 -- a loaded model: check the answer words now, not at the first score

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        for derived in ("_loading", "_words", "_chat"):
            state.pop(derived, None)
        if self.model_name is not None:
            state["_model"] = None  # loaded again where it is unpickled, from its name
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._loading = threading.Lock()

    @property
    def model(self) -> Model:
        """The model, loaded on first use when given by name."""
        if self._model is None:
            with self._loading:
                if self._model is None:
                    self._model = load(self.model_name)
        return self._model

    def question_of(self, prompt: str) -> str:
        """What the model is asked about for `prompt`: `question=` if given; else the last user turn
        when `prompt` is a conversation rendered by the model's chat template; else `prompt` itself."""
        if self.fixed_question is not None:
            return self.fixed_question
        chat = self._chat
        if chat is None:
            return prompt
        start = prompt.rfind(chat.user_opens)
        if start < 0:
            return prompt
        turn = prompt[start + len(chat.user_opens) :]
        end = turn.find(chat.user_closes) if chat.user_closes else -1
        return turn if end < 0 else turn[:end]

    @cached_property
    def _chat(self) -> _ChatMarkers | None:
        return _ChatMarkers.of(self.model.tokenizer)

    @cached_property
    def _words(self) -> tuple[list[int], list[int]]:
        return _first_tokens(self.model, self.yes_word), _first_tokens(self.model, self.no_word)

    def _score(self, prompts, outputs):
        model = self.model
        yes_ids, no_ids = self._words
        roots = []
        for prompt, output in zip(prompts, outputs):
            question = self.question_of(prompt)
            content = self.template.format(question=question, prompt=question, output=output)
            if self._chat is not None:
                ids = model.apply_chat_template([{"role": "user", "content": content}])
            else:
                ids = model.encode(content + "\nAnswer:")
            roots.append(_Prompt(tuple(ids)))
        logits = model.logits(roots)
        for root in roots:
            model.cache.discard(root)
        probs = logits.float().softmax(-1)
        yes = probs[:, yes_ids].sum(-1)
        no = probs[:, no_ids].sum(-1)
        return (yes / (yes + no).clamp_min(1e-12)).tolist()


@dataclass(eq=False)
class _Prompt:
    """A root hypothesis for `Model.logits`: no parent, the prompt's tokens."""

    new_tokens: tuple[int, ...]
    parent: None = None


@dataclass(frozen=True)
class _ChatMarkers:
    """How a chat template writes a user turn: the text that opens one (common to the first turn and a
    later one) and the text that follows its content (common to a turn followed by the assistant's
    answer and to one followed by the generation prompt). Found by rendering probe conversations."""

    user_opens: str
    user_closes: str

    PROBES = ("QPROBEONEQ", "APROBETWOA", "QPROBETHREEQ")

    @classmethod
    def of(cls, tokenizer) -> _ChatMarkers | None:
        """The markers of the tokenizer's chat template; None without one, or when it does not render
        user turns as text around their content (then a prompt is taken as the question itself)."""
        if not getattr(tokenizer, "chat_template", None):
            return None
        first, answer, second = cls.PROBES
        try:
            one = tokenizer.apply_chat_template(
                [{"role": "user", "content": first}], tokenize=False, add_generation_prompt=True
            )
            three = tokenizer.apply_chat_template(
                [
                    {"role": "user", "content": first},
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": second},
                ],
                tokenize=False,
                add_generation_prompt=True,
            )
        except Exception:  # a template that refuses these conversations: treat prompts as plain text
            return None
        if one.count(first) != 1 or not all(three.count(probe) == 1 for probe in cls.PROBES):
            return None
        before_first, after_first = one.split(first)
        between_turns = three[three.index(answer) + len(answer) : three.index(second)]
        after_user = three[three.index(first) + len(first) : three.index(answer)]
        user_opens = _common_suffix(before_first, between_turns)
        if not user_opens.strip():
            return None
        return cls(user_opens, os.path.commonprefix([after_first, after_user]))


def _common_suffix(a: str, b: str) -> str:
    return os.path.commonprefix([a[::-1], b[::-1]])[::-1]


def _single_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{text!r} must be a single token for this tokenizer, got {len(ids)} tokens")
    return ids[0]


def _first_tokens(model, word: str) -> list[int]:
    """First tokens of `word` as an answer may begin it: bare and after a space."""
    return sorted({model.encode(form, add_special_tokens=False)[0] for form in (word, " " + word)})
