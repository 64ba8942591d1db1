"""A tiny random-weight Llama with a byte-level tokenizer, built from a config (no download)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from searchdec import Model

EOS = "<eos>"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token="<pad>")
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if tools %}tools:{{ tools | length }}\n{% endif %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tokenizer


def reward_model_config(tokenizer, **extra) -> LlamaConfig:
    """A one-layer random Llama's config for the model-based rewards' tests (PRM, ORM)."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def tiny_model(
    seed: int = 0, max_positions: int = 256, cache_bytes: int = 1 << 30, shared_prefix: bool = False
) -> Model:
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(config)
    # Larger output weights give a peaked, varied next-token distribution, as a trained model has.
    with torch.no_grad():
        hf.lm_head.weight.mul_(8.0)
    return Model(hf, tokenizer, name="tiny-llama", cache_bytes=cache_bytes, shared_prefix=shared_prefix)


def bias_token(model: Model, token_id: int, bias: float) -> None:
    """Add `bias` to one token's logit at every position (a forward hook on the output layer)."""

    def hook(_module, _inputs, logits):
        logits[..., token_id] += bias
        return logits

    model.hf.lm_head.register_forward_hook(hook)
