"""The real default model (SmolLM2-135M-Instruct from its PyPI package): greedy output equals
transformers' generate token for token, batching changes nothing, a cached model is
loaded without reading its GGUF again."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import searchdec as sd
from searchdec.models import loading

pytestmark = pytest.mark.integration

PLAIN = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics are",
    "import numpy as np\nx = np.arange(10)\n",
    "Q: What is 17 times 3?\nA:",
    "The best way to learn a new language is",
    "SELECT name FROM users WHERE",
    "Photosynthesis converts",
    "Here is a haiku about autumn:\n",
    "1, 2, 3, 5, 8, 13,",
    '{"name": "Alice", "age":',
]
CHAT = [
    [{"role": "user", "content": "What is the capital of Japan?"}],
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "Define entropy."}],
    [{"role": "user", "content": "List three fruits."}],
    [{"role": "user", "content": "Translate 'good morning' to Spanish."}],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "Summarize the plot of Romeo and Juliet in one sentence."}],
    [{"role": "user", "content": "Give me a JSON object with keys a and b."}],
    [{"role": "user", "content": "Why is the sky blue?"}],
]
PROMPTS = PLAIN + CHAT


def prompt_ids(model, prompt):
    return model.encode(prompt) if isinstance(prompt, str) else model.apply_chat_template(prompt)


def transformers_greedy(model, ids, max_new_tokens):
    with torch.inference_mode():
        out = model.hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.tokenizer.pad_token_id,
        )
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("index", range(len(PROMPTS)), ids=lambda i: f"{'plain' if i < len(PLAIN) else 'chat'}{i}")
def test_greedy_is_token_identical_to_transformers_generate(smollm, index):
    prompt = PROMPTS[index]
    ours = sd.generate(smollm, prompt, max_tokens=64)
    theirs = transformers_greedy(smollm, prompt_ids(smollm, prompt), 64)
    assert ours.tokens == theirs
    assert ours.finish_reason == ("stop" if theirs[-1] in smollm.eos_token_ids else "length")


def test_batched_prompts_give_the_same_tokens_as_one_by_one(smollm):
    batched = sd.generate(smollm, PROMPTS, max_tokens=64)
    for prompt, out in zip(PROMPTS, batched):
        assert out.tokens == sd.generate(smollm, prompt, max_tokens=64).tokens, prompt


def test_chat_answer_is_sensible(smollm):
    out = sd.generate(smollm, [{"role": "user", "content": "What is the capital of France?"}], max_tokens=30)
    assert "Paris" in out.text
    assert out.finish_reason == "stop"


def test_sampling_with_n_returns_n_seeded_hypotheses(smollm):
    search = sd.Sample(temperature=0.8, top_p=0.95, n=4, seed=7)
    out = sd.generate(smollm, "My favourite animal is", max_tokens=16, search=search)
    again = sd.generate(smollm, "My favourite animal is", max_tokens=16, search=search)
    assert len(out.hypotheses) == 4
    assert [h.tokens for h in out.hypotheses] == [h.tokens for h in again.hypotheses]


def test_vocab_bytes_match_the_tokenizer(smollm):
    text = "Hello, wörld! naïve café ✓ 42\n\tdef f(): pass"
    tokens = smollm.encode(text)
    assert b"".join(smollm.vocab_bytes[t] for t in tokens) == text.encode()
    assert len(smollm.vocab_bytes) == smollm.vocab_size


@dataclass(eq=False)  # compared by identity, as the prefix cache keys hypotheses
class _Prompt:
    new_tokens: tuple[int, ...]
    parent: None = None


def test_a_second_load_reads_the_cached_safetensors_without_touching_the_gguf(smollm, monkeypatch):
    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF was read again although its converted copy is cached")

    monkeypatch.setattr(loading, "_convert", no_gguf)
    monkeypatch.setattr(loading, "_check_gguf", no_gguf)
    again = sd.load("smollm2-135m")
    assert (Path(again.hf.name_or_path) / "model.safetensors").is_file()
    assert again.hf.name_or_path == smollm.hf.name_or_path
    prompt = _Prompt(tuple(smollm.encode("The capital of France is")))
    try:
        assert torch.equal(again.logits([prompt]), smollm.logits([prompt]))
    finally:
        smollm.cache.discard(prompt)


def test_cli_generates_json_with_the_default_model():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "searchdec",
            "generate",
            "What is the capital of France?",
            "--max-tokens",
            "20",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert "Paris" in out["text"]
    assert out["finish_reason"] in ("stop", "length")


def test_cli_generate_prints_no_future_or_deprecation_warning():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("PYTHONWARNINGS", None)  # the warnings a user sees: Python's default filters
    result = subprocess.run(
        [sys.executable, "-m", "searchdec", "generate", "hi", "--max-tokens", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "tokens, finish_reason=" in result.stderr  # it generated to the end
    assert "FutureWarning" not in result.stderr, result.stderr
    assert "DeprecationWarning" not in result.stderr, result.stderr


def test_cli_reports_a_bad_model_name_without_a_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "searchdec", "generate", "hi", "--model", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "unknown model 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_bfloat16_greedy_equals_transformers_in_bfloat16():
    model = sd.load("smollm2-135m", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    for prompt in PROMPTS[:3] + CHAT[:2]:
        ours = sd.generate(model, prompt, max_tokens=32)
        assert ours.tokens == transformers_greedy(model, prompt_ids(model, prompt), 32)


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
    },
    "required": ["name", "age"],
}


def test_constrained_greedy_and_sampled_json_validates(smollm):
    import jsonschema

    messages = [{"role": "user", "content": "Describe a person as a JSON object."}]
    greedy = sd.generate(smollm, messages, constraint=sd.json_schema(PERSON), max_tokens=120)
    sampled = sd.generate(
        smollm,
        messages,
        constraint=sd.json_schema(PERSON, strict=True),
        max_tokens=120,
        search=sd.Sample(temperature=0.9, n=4, seed=3),
    )
    finished = [h for h in [greedy, *sampled.hypotheses] if h.finish_reason == "stop"]
    assert len(finished) >= 3
    for h in finished:
        jsonschema.validate(json.loads(h.text), PERSON)
    for h in sampled.hypotheses:
        if h.finish_reason == "stop":
            assert set(json.loads(h.text)) <= set(PERSON["properties"])  # strict: no extra keys


def test_choice_and_regex_with_the_real_model(smollm):
    answer = sd.generate(
        smollm,
        [{"role": "user", "content": "Is water wet? Answer yes or no."}],
        constraint=sd.choice(["yes", "no"]),
        max_tokens=5,
    )
    assert answer.text in ("yes", "no") and answer.finish_reason == "stop"
    phone = sd.generate(smollm, "Call me at", constraint=sd.regex(r" \(\d{3}\) \d{3}-\d{4}"), max_tokens=20)
    assert phone.finish_reason == "stop"
    import re

    assert re.fullmatch(r" \(\d{3}\) \d{3}-\d{4}", phone.text)
