"""Bad input gets a specific error naming its cause, before any forward pass."""

import pytest
from tiny import bias_token, tiny_model

import searchdec as sd


def test_unknown_model_name_is_a_model_not_found_error():
    with pytest.raises(sd.ModelNotFoundError, match="unknown model 'no-such-model'.*smollm2-135m"):
        sd.load("no-such-model")


def test_missing_hf_id_offline_is_a_model_not_found_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(sd.ModelNotFoundError, match="not available on this machine"):
        sd.load("nobody/no-such-model")


def test_file_that_is_not_gguf_is_rejected_by_its_magic(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a gguf" * 10)
    with pytest.raises(sd.ModelLoadError, match="not a GGUF file"):
        sd.load(str(path))


def test_truncated_gguf_is_rejected_as_corrupt(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "broken.gguf"
    writer = GGUFWriter(str(path), "llama")
    import numpy as np

    writer.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])
    with pytest.raises(sd.ModelLoadError, match="(truncated|corrupt) GGUF"):
        sd.load(str(path))


def test_prompt_longer_than_the_context_window_is_rejected_before_any_forward():
    model = tiny_model(max_positions=32)
    with pytest.raises(sd.PromptTooLongError, match="40 tokens.*context window of 32"):
        sd.generate(model, "x" * 40)
    assert model.stats.calls == 0


def test_generation_stops_with_length_at_the_context_window():
    model = tiny_model(max_positions=32)
    bias_token(model, model.tokenizer.eos_token_id, -1e4)  # EOS never wins
    out = sd.generate(model, "x" * 20, max_tokens=100)
    assert out.finish_reason == "length"
    assert out.prompt_tokens + len(out.tokens) == 32


@pytest.mark.parametrize("max_tokens", [-1, -100])
def test_negative_max_tokens_is_rejected(tiny, max_tokens):
    with pytest.raises(ValueError, match="max_tokens must be >= 0"):
        sd.generate(tiny, "hello", max_tokens=max_tokens)
    assert tiny.stats.calls == 0


def test_zero_max_tokens_returns_empty_length_output(tiny):
    out = sd.generate(tiny, "hello", max_tokens=0)
    assert (out.text, out.tokens, out.finish_reason) == ("", [], "length")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=0), "temperature must be > 0"),
        (dict(top_p=0), "top_p must be in"),
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(min_p=1.5), "min_p must be in"),
        (dict(n=0), "n must be >= 1"),
    ],
)
def test_invalid_sampling_parameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sd.Sample(**kwargs)


def test_empty_prompt_is_rejected(tiny):
    with pytest.raises(ValueError, match="prompt is empty"):
        sd.generate(tiny, "")


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        sd.load("smollm2-135m", dtype="float8")


def test_tools_with_a_plain_prompt_is_rejected(tiny):
    with pytest.raises(ValueError, match="tools= needs chat messages"):
        sd.generate(tiny, "hi", tools=[{"type": "function", "function": {"name": "f"}}])
