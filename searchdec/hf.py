"""A beam-safe grammar constraint for `transformers.generate`.

Grammar logits processors that keep one parse state per batch row (outlines, XGrammar's HF wrapper,
transformers-cfg) break under beam search: beams are reordered every step, so row i's state belongs
to another hypothesis. Here a state is keyed by the hypothesis itself — the tokens it generated
after the prompt — and derived from its parent's state, whatever row either sits in:

    processor = GrammarLogitsProcessor(sd.json_schema(schema), tokenizer, vocab_size=model.config.vocab_size)
    model.generate(**inputs, num_beams=4, logits_processor=[processor], max_new_tokens=64)

Either grammar backend works (`sd.regex(..., backend="outlines-core")`); compiling needs only the
tokenizer. Only the states of the last step are kept. Rows whose grammar has finished may only end (EOS or
padding), so every returned sequence that ended does so where the grammar accepts.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from searchdec.grammars import Constraint, ConstraintSpec, State, apply_masks, tokenizer_info


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks `transformers.generate` scores with `constraint`: a spec (compiled here for `tokenizer`,
    with whichever backend the spec names) or a Constraint already compiled for that tokenizer."""

    def __init__(self, constraint: ConstraintSpec | Constraint, tokenizer, vocab_size: int | None = None) -> None:
        if isinstance(constraint, ConstraintSpec):
            constraint = constraint.compile(tokenizer_info(tokenizer, vocab_size))
        elif not isinstance(constraint, Constraint):
            kind = type(constraint).__name__
            raise TypeError(f"constraint must be a spec (sd.regex(...), ...) or a compiled Constraint, got {kind}")
        self.constraint = constraint
        self.end_ids = sorted({i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None})
        self._prompt_length: int | None = None
        self._states: dict[tuple[int, ...], State] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._prompt_length is None or input_ids.shape[1] <= self._prompt_length:
            self._prompt_length = input_ids.shape[1]  # a new generate() call
            self._states = {}
        generated = input_ids[:, self._prompt_length :].tolist()
        states: dict[tuple[int, ...], State] = {}
        live_rows, live_states = [], []
        for row, tokens in enumerate(generated):
            key = tuple(tokens)
            state = states.get(key) or self._state_for(key)
            states[key] = state
            if state.finished or state.dead:
                ended = torch.full_like(scores[row], float("-inf"))
                ended[self.end_ids] = scores[row, self.end_ids]
                scores[row] = ended
            else:
                live_rows.append(row)
                live_states.append(state)
        if live_rows:
            index = torch.tensor(live_rows, device=scores.device)
            scores[index] = apply_masks(scores[index].float(), live_states).to(scores.dtype)
        self._states = states
        return scores

    def _state_for(self, key: tuple[int, ...]) -> State:
        # The parent is normally a state of the previous step; a row seen for the first time is replayed.
        known = len(key) - 1 if key and key[:-1] in self._states else 0
        state = self._states[key[:-1]] if known else self.constraint.start()
        for token in key[known:]:
            if state.finished or state.dead or not state.allows(token):
                return state  # a row decoding on after its end (padding): keep it ended
            state = state.advance(token)
        return state
