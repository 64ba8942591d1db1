"""The second packaged model, Gemma-3-270M (262k vocabulary, sliding-window attention), assembled from
four PyPI chunk packages: greedy equals transformers, also past the 512-token sliding window."""

import pytest
import torch

import searchdec as sd

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma():
    return sd.load("gemma3-270m")


def transformers_greedy(model, ids, max_new_tokens):
    with torch.inference_mode():
        out = model.hf.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(ids) :].tolist()


LONG = " ".join(f"item {i} is {'red' if i % 3 else 'blue'};" for i in range(150)) + " The color of item 151 is"


@pytest.mark.parametrize(
    "prompt", ["The capital of France is", "def quicksort(xs):", LONG], ids=["short", "code", "long"]
)
def test_greedy_is_token_identical_to_transformers(gemma, prompt):
    ids = gemma.encode(prompt)
    out = sd.generate(gemma, prompt, max_tokens=24)
    assert out.tokens == transformers_greedy(gemma, ids, 24)


def test_long_prompt_exceeds_the_sliding_window(gemma):
    assert len(gemma.encode(LONG)) > gemma.config.sliding_window


def test_large_vocabulary_bytes(gemma):
    assert gemma.vocab_size == 262144
    text = "Hello, wörld! naïve café ✓ 42\n\tdef f(): pass"
    tokens = gemma.encode(text, add_special_tokens=False)
    assert b"".join(gemma.vocab_bytes[t] for t in tokens) == text.encode()
