"""What the benches share: the peer's timing loop, so that every bench times transformers the same way.

- `transformers_generate`: `model.hf.generate` on the same token ids searchdec decodes (greedy, or beam search
  with `num_beams`), timed, its new tokens cut after the first EOS as searchdec returns them, and the bytes of
  keys and values its cache holds at the end;
- `alternate`: ours and the peer run `repeats` times each, alternating which goes first, outputs checked equal;
- `pct`: a percentile of a list of timings (nan for none).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Prompt = str | list[dict] | list[int]  # text, chat messages, or token ids


@dataclass(frozen=True)
class PeerRun:
    """One timed `generate` call: wall seconds, each row's new tokens (up to and including the first EOS),
    and the bytes of the keys and values in the cache `generate` returned (None: a cache without `layers`)."""

    seconds: float
    tokens: list[list[int]]
    kv_bytes: int | None


def prompt_ids(model, prompt: Prompt) -> list[int]:
    """The token ids searchdec decodes for `prompt`: text encoded, chat messages through the chat template."""
    if isinstance(prompt, str):
        return model.encode(prompt)
    if prompt and isinstance(prompt[0], dict):
        return model.apply_chat_template(prompt)
    if all(isinstance(token, int) for token in prompt):
        return list(prompt)
    raise TypeError(f"a prompt is text, chat messages or token ids, got {type(prompt[0]).__name__} items")


def transformers_generate(model, prompts: Sequence[Prompt], max_tokens: int, num_beams: int = 1) -> PeerRun:
    """Time transformers `generate(do_sample=False)` (greedy, or beam search when `num_beams` > 1) on `prompts`
    as one batch, left-padded, with searchdec's token ids and EOS tokens. Only `generate` is timed."""
    if not prompts:
        raise ValueError("transformers_generate needs at least one prompt")
    if max_tokens < 1 or num_beams < 1:
        raise ValueError(f"max_tokens and num_beams must be >= 1, got {max_tokens} and {num_beams}")
    rows = [prompt_ids(model, prompt) for prompt in prompts]
    width = max(len(ids) for ids in rows)
    pad = model.tokenizer.pad_token_id
    if pad is None and any(len(ids) < width for ids in rows):
        raise ValueError(f"model {model.name!r} has no pad token: prompts of different lengths cannot share a batch")
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in rows], device=model.device)
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.hf.generate(
            input_ids,
            attention_mask=attention,
            max_new_tokens=max_tokens,
            num_beams=num_beams,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=sorted(model.eos_token_ids),
            return_dict_in_generate=True,
        )
    seconds = time.perf_counter() - start
    eos = model.eos_token_ids
    tokens = []
    for row in out.sequences[:, width:].tolist():
        end = next((i for i, token in enumerate(row) if token in eos), None)
        tokens.append(row if end is None else row[: end + 1])
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)  # the older name warns
    layers = getattr(cache, "layers", None)
    kv_bytes = None
    if layers is not None:
        kv_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in layers if layer.keys is not None)
    return PeerRun(seconds, tokens, kv_bytes)


Run = Callable[[], tuple[float, list[int]]]  # one timed run: (seconds, tokens)


def alternate(
    ours: Run, theirs: Run, repeats: int, first: int = 0, same: str | None = None
) -> tuple[list[tuple[float, list[int]]], list[tuple[float, list[int]]]]:
    """Run `ours` and `theirs` `repeats` times each, ours first when `first + repeat` is even, and return each
    one's (seconds, tokens) runs. With `same` (what is compared, e.g. "on prompt 3"), outputs that differ stop
    the bench: a speed comparison of different outputs would not be fair."""
    ours_runs: list[tuple[float, list[int]]] = []
    theirs_runs: list[tuple[float, list[int]]] = []
    for r in range(repeats):
        order = [(ours, ours_runs), (theirs, theirs_runs)]
        for run, runs in order if (first + r) % 2 == 0 else order[::-1]:
            runs.append(run())
        if same is not None and ours_runs[-1][1] != theirs_runs[-1][1]:
            raise SystemExit(f"outputs differ {same}: the comparison would not be fair")
    return ours_runs, theirs_runs


def pct(values: Sequence[float], q: float) -> float:
    """The `q`th percentile of `values` (nan when there are none)."""
    return float(np.percentile(values, q)) if len(values) else float("nan")
