"""Shared-prefix (cascade) attention: many rows attend to ONE stored copy of their common prefix.

The hypotheses of one search share their prompt (and often a stretch after it). Instead of every
row carrying its own copy of those keys and values — as transformers' beam search does, copying all
of them at every reorder — a forward over such rows holds the prefix once, `[1, kv_heads, P, dim]`,
and each row's own suffix `[rows, kv_heads, S, dim]`. Attention is computed in two parts and merged
exactly by their log-sum-exp (Juravsky et al., "Hydragen: High-Throughput LLM Inference with Shared
Prefixes", arXiv 2402.05099; FlashInfer's cascade inference, `merge_state`):

    part over the prefix:  o_p, lse_p   (every row's queries in one matrix product per kv head)
    part over the suffix:  o_s, lse_s   (per row, under the row's mask)
    lse = logaddexp(lse_p, lse_s);  o = o_p * exp(lse_p - lse) + o_s * exp(lse_s - lse)

which equals softmax attention over the concatenated keys. The prefix part reads the shared keys
once for the whole batch (Hydragen's inter-sequence batching), so it costs one matrix-matrix product
rather than one matrix-vector product per row.

It is registered the way transformers lets a model use a custom attention function
(`AttentionInterface.register`, `AttentionMaskInterface.register`) under `ATTENTION_NAME`; a model
switched to it runs exactly its previous `sdpa` attention (and masks) on every forward that passes
no `shared_prefix=` keyword, so `generate`, single-hypothesis decoding and tree verification are
untouched. `install(hf_model)` switches a model when the cascade applies to it (sdpa attention, no
sliding-window layer, no logit soft-capping) and says whether it did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "searchdec_cascade"


@dataclass(frozen=True)
class SharedPrefix:
    """The common prefix's keys and values per layer, each `[1, kv_heads, P, head_dim]` (views, no copy)."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]


def partial_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, visible: torch.Tensor | None, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of `query` [B, kv_heads, G, d] over one part's keys/values [B or 1, kv_heads, K, d]
    (G: the query heads of a kv head times the query positions), with `visible` [B, 1, G, K] (bool)
    or None: the part's output [B, kv_heads, G, d] normalised over that part alone, and its
    log-sum-exp [B, kv_heads, G, 1] (-inf where a query sees nothing of the part; its output is 0 there)."""
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scaling
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = torch.exp(scores - top)
    total = weights.sum(-1, keepdim=True)
    out = torch.matmul(weights.to(value.dtype), value) / total.clamp_min(torch.finfo(total.dtype).tiny).to(value.dtype)
    return out, top + total.log()


def merge_states(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two parts' normalised outputs and log-sum-exps merged into attention over both (exact)."""
    lse = torch.logaddexp(lse_a, lse_b)
    out = out_a * torch.exp(lse_a - lse).to(out_a.dtype) + out_b * torch.exp(lse_b - lse).to(out_b.dtype)
    return out, lse


def cascade_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    shared_prefix: SharedPrefix | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """An `AttentionInterface` function: `sdpa` when the forward has no `shared_prefix`, otherwise
    attention over the shared prefix (every row sees all of it) merged with attention over the
    row's own keys under `attention_mask` (a 4D boolean mask over those keys only)."""
    if shared_prefix is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if kwargs.get("sliding_window") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError("shared-prefix attention supports neither sliding windows nor attention sinks")
    if attention_mask is None or attention_mask.dtype != torch.bool or attention_mask.dim() != 4:
        raise ValueError("shared-prefix attention needs a 4D boolean mask over the rows' own keys")
    rows, heads, n, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scaling = dim**-0.5 if scaling is None else scaling
    layer = module.layer_idx
    prefix_keys, prefix_values = shared_prefix.keys[layer], shared_prefix.values[layer]
    # Query heads sharing a kv head are consecutive (transformers' repeat_kv): group them with positions.
    grouped = query.reshape(rows, kv_heads, group * n, dim)
    # Prefix part: every row's queries against the one stored copy, one product per kv head.
    stacked = grouped.transpose(0, 1).reshape(1, kv_heads, rows * group * n, dim)
    out_p, lse_p = partial_attention(stacked, prefix_keys, prefix_values, None, scaling)
    out_p = out_p.reshape(kv_heads, rows, group * n, dim).transpose(0, 1)
    lse_p = lse_p.reshape(kv_heads, rows, group * n, 1).transpose(0, 1)
    # Suffix part: each row against its own keys, under its mask (the same for every head).
    visible = attention_mask[:, :, None].expand(rows, 1, group, n, key.shape[2]).reshape(rows, 1, group * n, -1)
    out_s, lse_s = partial_attention(grouped, key, value, visible, scaling)
    out, _ = merge_states(out_p, lse_p, out_s, lse_s)
    out = out.reshape(rows, heads, n, dim).transpose(1, 2).contiguous()
    return out, None


AttentionInterface.register(ATTENTION_NAME, cascade_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def install(hf_model, sliding_window: bool) -> bool:
    """Switch `hf_model` to the cascade attention when it applies (its attention is `sdpa`, no layer
    has a sliding window, logits are not soft-capped); True when the model runs it."""
    config = hf_model.config
    implementation = getattr(config, "_attn_implementation", None)
    if implementation == ATTENTION_NAME:
        return True
    if implementation != "sdpa" or sliding_window or getattr(config, "attn_logit_softcapping", None) is not None:
        return False
    if not hf_model._can_set_attn_implementation():
        return False
    hf_model.set_attn_implementation(ATTENTION_NAME)
    return config._attn_implementation == ATTENTION_NAME
