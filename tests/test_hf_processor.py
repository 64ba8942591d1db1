"""The beam-safe logits processor: `transformers.generate` with beams returns only valid outputs."""

import re

import torch

import searchdec as sd
from searchdec.hf import GrammarLogitsProcessor

PATTERN = r"(alpha|beta|gamma)-[0-9]{2}-(x|yy|zzz)"


def test_beam_search_with_the_processor_returns_only_matching_sequences(tiny):
    processor = GrammarLogitsProcessor(sd.regex(PATTERN), tiny.tokenizer, vocab_size=tiny.vocab_size)
    prompt = torch.tensor([tiny.encode("code:")])
    with torch.inference_mode():
        out = tiny.hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            num_beams=4,
            num_return_sequences=4,
            max_new_tokens=20,
            logits_processor=[processor],
            do_sample=False,
            pad_token_id=tiny.tokenizer.pad_token_id,
            eos_token_id=tiny.tokenizer.eos_token_id,
        )
    texts = [tiny.decode(row[prompt.shape[1] :].tolist(), skip_special_tokens=True) for row in out]
    assert len(set(texts)) > 1  # the beams really differ
    for text in texts:
        assert re.fullmatch(PATTERN, text), text


def test_processor_state_follows_hypotheses_not_rows(tiny):
    processor = GrammarLogitsProcessor(sd.choice(["ab", "ba"]), tiny.tokenizer, vocab_size=tiny.vocab_size)
    a, b = tiny.encode("a", add_special_tokens=False)[0], tiny.encode("b", add_special_tokens=False)[0]
    scores = torch.zeros(2, tiny.vocab_size)
    processor(torch.tensor([[7], [7]]), scores.clone())
    # Step 2: rows swapped hypotheses relative to a row-keyed processor's expectations.
    out = processor(torch.tensor([[7, b], [7, a]]), torch.zeros(2, tiny.vocab_size))
    assert torch.isfinite(out[0, a]) and not torch.isfinite(out[0, b])
    assert torch.isfinite(out[1, b]) and not torch.isfinite(out[1, a])


def test_batched_prompts_with_the_processor(tiny):
    processor = GrammarLogitsProcessor(sd.regex(r"[0-9]{3}"), tiny.tokenizer, vocab_size=tiny.vocab_size)
    tiny.tokenizer.padding_side = "left"
    enc = tiny.tokenizer(["a", "longer prompt"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = tiny.hf.generate(
            **enc,
            max_new_tokens=6,
            logits_processor=[processor],
            do_sample=False,
            pad_token_id=tiny.tokenizer.pad_token_id,
            eos_token_id=tiny.tokenizer.eos_token_id,
        )
    for row in out:
        text = tiny.decode(row[enc["input_ids"].shape[1] :].tolist(), skip_special_tokens=True)
        assert re.fullmatch(r"[0-9]{3}", text), text
