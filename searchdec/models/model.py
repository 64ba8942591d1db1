"""The Model: a causal LM behind one hot method, `logits(hypotheses)`, that returns next-token logits
for a batch of hypotheses of any lengths in one forward, reusing each one's prefix KV cache.

A hypothesis is any object with `parent` (another hypothesis or None) and `new_tokens` (the token
ids it appends to its parent; a root's are its prompt). The model knows nothing else about it: the
search layer's nodes fit, and so would anything else shaped like them.

How a batch is laid out: every row's cached past is right-aligned to a common width P and its new
tokens right-aligned to a common width N, so row i reads
`[pad*(P-p_i), past_i, pad*(N-n_i), new_i]`; the attention mask hides the pads and positions are
given explicitly (p_i, p_i+1, ...), so padding never changes a result. When the batch is the
previous forward's rows (decoding, beam reordering), the past is that forward's cache tensors, used
as they are or gathered with one `index_select`, as transformers does for beams.

Shared prefix (cascade attention, `cascade.py`): when every row's past starts with the same stored
positions (the prompt a search's hypotheses grew from, and whatever stretch after it they still
share) and the batch does not simply append to one row in place, that prefix is read once, as one
copy broadcast over the rows, and only each row's suffix is laid out as above (gathered on a
reorder, copied for a new sibling). Entries then hold their prefix by reference (`KVEntry.prefix`),
so the prompt is forwarded once and stored once however many hypotheses grow from it. It applies
to models whose attention is `sdpa` without sliding windows or soft-capping (`cascade.install`);
elsewhere, for a batch of rows with different prefixes (several prompts), and for `logits_tree`, a
forward copies each row's whole past as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from searchdec.errors import ModelLoadError
from searchdec.models import cascade
from searchdec.models.base import Runtime, TokenNode, cached_past
from searchdec.models.cache import KVBlock, KVBuffers, KVEntry, PrefixCache
from searchdec.models.vocab import token_bytes

DEFAULT_CACHE_BYTES = 2 * 1024**3
SPARE_TO_TRIM = 64  # spare positions worth one copy to free once buffers become a shared prefix


@dataclass
class ForwardStats:
    """What the model has computed: forward calls and tokens fed through the network."""

    calls: int = 0
    tokens: int = 0


@dataclass
class _Row:
    node: Any
    past: KVEntry | None
    new: list[int]

    @property
    def past_length(self) -> int:
        return 0 if self.past is None else self.past.length


class Model(Runtime):
    """A Hugging Face causal LM with its tokenizer, a prefix KV cache and batched forwards."""

    def __init__(
        self, hf_model, tokenizer, name: str = "", cache_bytes: int = DEFAULT_CACHE_BYTES, shared_prefix: bool = False
    ):
        """`shared_prefix=True` lets rows that share a stored prefix read it once (cascade attention, models/
        cascade.py): a fraction of the KV memory in search, but logits equal the copy path's only to float
        rounding, so a seeded search could then depend on what the cache held (off by default: results are
        bit-identical whatever the batching, history or executor)."""
        self.hf = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(hf_model.config, "name_or_path", "")
        self.cache = PrefixCache(cache_bytes)
        self.stats = ForwardStats()
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._cache_keyword = cache_keyword(self.hf)
        self.shared_prefix = shared_prefix and cascade.install(self.hf, self.sliding_window_layers)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, dtype={self.dtype}, device={self.device})"

    # --- facts about the model -------------------------------------------------------------

    @property
    def config(self):
        return self.hf.config

    @property
    def device(self) -> torch.device:
        return self.hf.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.dtype

    @cached_property
    def vocab_size(self) -> int:
        """Width of the logits (may exceed the tokenizer's length when the embedding is padded)."""
        return self.hf.get_output_embeddings().weight.shape[0]

    @cached_property
    def sliding_window_layers(self) -> bool:
        """Whether some layer attends within a sliding window (its own masks, which a tree mask replaces)."""
        config = self.config
        kinds = getattr(config, "layer_types", None) or ()
        return any("sliding" in str(kind) for kind in kinds) or bool(getattr(config, "use_sliding_window", False))

    @cached_property
    def context_window(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", None) or 2048)

    @cached_property
    def eos_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.hf.generation_config, self.config):
            eos = getattr(source, "eos_token_id", None)
            if eos is not None:
                ids.update([eos] if isinstance(eos, int) else eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return frozenset(ids)

    @cached_property
    def vocab_bytes(self) -> list[bytes]:
        """Each token id's bytes, as grammar engines need them (special tokens: their text)."""
        return token_bytes(self.tokenizer, self.vocab_size)

    # --- the hot path ----------------------------------------------------------------------

    def logits(self, nodes: Sequence[TokenNode]) -> torch.Tensor:
        """Next-token logits (float32, [len(nodes), vocab_size]) after each hypothesis's sequence.

        Each node's KV entry is stored in `self.cache`, so its children forward only their new tokens.
        """
        return self.logits_last(nodes, 1)[:, 0]

    @torch.inference_mode()
    def logits_last(self, nodes: Sequence[TokenNode], keep: int) -> torch.Tensor:
        """Logits ([len(nodes), keep, vocab_size]) at the last `keep` positions of each row: entry j
        predicts the token after position -keep+j. A row forwarding fewer than `keep` tokens has
        padding in its first entries (its last entry is always its next-token logits)."""
        if not nodes:
            raise ValueError("logits() needs at least one hypothesis")
        rows = [self._row(node) for node in nodes]
        width_new = max(len(row.new) for row in rows)
        if not 1 <= keep <= width_new:
            raise ValueError(f"keep must be in [1, {width_new}] (the tokens this batch forwards), got {keep}")
        prefix = self._shared_prefix(rows, width_new)
        if prefix is not None:
            return self._forward_shared(rows, prefix, width_new, keep)
        buffers, width_past = self._past_buffers(rows, width_new)
        batch = len(rows)

        input_ids = torch.full((batch, width_new), self._pad_id, dtype=torch.long)
        positions = torch.zeros((batch, width_new), dtype=torch.long)
        mask = torch.zeros((batch, width_past + width_new), dtype=torch.long)
        for i, row in enumerate(rows):
            n, p = len(row.new), row.past_length
            input_ids[i, width_new - n :] = torch.tensor(row.new)
            positions[i, width_new - n :] = torch.arange(p, p + n)
            mask[i, width_past - p : width_past] = 1
            mask[i, width_past + width_new - n :] = 1

        return self._forward(rows, buffers, width_past, input_ids, positions, mask, keep)

    @torch.inference_mode()
    def logits_tree(self, node: TokenNode, parents: Sequence[int]) -> torch.Tensor:
        """Logits of a token tree in one forward (tree attention, as SpecInfer and Medusa verify).

        `node.new_tokens` are the tree's tokens, each after its parent; `parents[j]` is the index of
        token j's parent among them, or -1 for `node.parent` (the tree's root: every tree token sees
        it whole). Token j sits at position len(root) + depth(j) and attends to the root and its own
        ancestors only, so row 1 + j of the result ([1 + len(parents), vocab]) is the next-token
        logits after the root followed by token j's path, and row 0 those after the root. The
        forward's entry is stored as `node`'s in tree order (not a sequence: keep a path of it with
        `cache.put_branch`, then discard it)."""
        size = len(parents)
        if size != len(node.new_tokens) or size == 0:
            raise ValueError(f"need one parent per tree token, got {size} for {len(node.new_tokens)} tokens")
        if self.sliding_window_layers:
            raise NotImplementedError(
                f"model {self.name!r} has sliding-window attention layers; a tree mask would bypass their window"
            )
        depth: list[int] = []
        for j, parent in enumerate(parents):
            if not -1 <= parent < j:
                raise ValueError(f"parents[{j}] must be -1 or an earlier token's index, got {parent}")
            depth.append(0 if parent < 0 else depth[parent] + 1)
        row = self._row(node)
        pending = len(row.new) - size  # the root's own tokens not cached yet: a causal chain
        if pending < 1:
            raise ValueError("the tree's root must have a token to forward (its last one is recomputed if cached)")
        buffers, width_past = self._past_buffers([row], len(row.new))
        p, n = row.past_length, len(row.new)
        visible = torch.zeros((n, width_past + n), dtype=torch.bool)
        visible[:, width_past - p : width_past] = True
        chain = torch.ones((pending, pending), dtype=torch.bool).tril()
        visible[:pending, width_past : width_past + pending] = chain
        visible[pending:, width_past : width_past + pending] = True
        for j, parent in enumerate(parents):
            at = width_past + pending + j
            if parent >= 0:
                visible[pending + j, width_past + pending :] = visible[pending + parent, width_past + pending :]
            visible[pending + j, at] = True
        mask = torch.zeros(visible.shape, dtype=self.dtype).masked_fill_(~visible, torch.finfo(self.dtype).min)
        positions = torch.tensor([list(range(p, p + pending)) + [p + pending + d for d in depth]])
        input_ids = torch.tensor([row.new])
        return self._forward([row], buffers, width_past, input_ids, positions, mask[None, None], size + 1)[0]

    def _forward_shared(self, rows: list[_Row], prefix: KVEntry, width_new: int, keep: int) -> torch.Tensor:
        """A forward of `rows` over one copy of their common `prefix`, each row's suffix laid out as usual."""
        shared = prefix.length
        suffixes = [_Row(row.node, _after(row.past, shared), row.new) for row in rows]
        buffers, width_past = self._past_buffers(suffixes, width_new)
        batch = len(rows)
        input_ids = torch.full((batch, width_new), self._pad_id, dtype=torch.long)
        positions = torch.zeros((batch, width_new), dtype=torch.long)
        keys_seen = torch.zeros((batch, width_past + width_new), dtype=torch.bool)
        for i, row in enumerate(suffixes):
            n, p = len(row.new), row.past_length
            input_ids[i, width_new - n :] = torch.tensor(row.new)
            positions[i, width_new - n :] = torch.arange(shared + p, shared + p + n)
            keys_seen[i, width_past - p : width_past] = True
            keys_seen[i, width_past + width_new - n :] = True
        causal = torch.ones((width_new, width_past + width_new), dtype=torch.bool).tril(width_past)
        mask = keys_seen[:, None, None, :] & causal[None, None]
        storage, at = prefix.block.buffers, slice(prefix.start, prefix.start + shared)
        if storage.capacity - storage.used >= SPARE_TO_TRIM:
            self.cache.trim(storage)  # a prefix's buffers are read from now on, not appended to
        views = cascade.SharedPrefix(
            tuple(k[prefix.row : prefix.row + 1, :, at] for k in storage.keys),
            tuple(v[prefix.row : prefix.row + 1, :, at] for v in storage.values),
        )
        return self._forward(suffixes, buffers, width_past, input_ids, positions, mask, keep, prefix, views)

    def _shared_prefix(self, rows: list[_Row], width_new: int) -> KVEntry | None:
        """The stored positions every row's past starts with, when the batch should read them once:
        all rows have a past, their first parts lie at one place of one buffer row, each row's rest
        is one stretch, and the batch is not one that appends to its rows' buffers in place."""
        if not self.shared_prefix or any(row.past is None for row in rows):
            return None
        if self._appends_in_place(rows, width_new):
            return None
        heads = [row.past.prefix or row.past for row in rows]
        first = heads[0]
        storage = first.block.buffers
        if any(h.block.buffers is not storage or h.row != first.row or h.start != first.start for h in heads):
            return None
        shortest = min(heads, key=lambda head: head.length)
        if any(row.past.prefix is not None and row.past.prefix.length != shortest.length for row in rows):
            return None  # that row's rest would be two stretches (prefix remainder and own part)
        return shortest

    @staticmethod
    def _appends_in_place(rows: list[_Row], width_new: int) -> bool:
        """Whether the batch is exactly the rows of one forward's buffers, which it extends in place."""
        first = rows[0].past
        if first is None or first.prefix is not None:
            return False
        block = first.block
        return (
            all(row.past is not None and row.past.block is block and row.past.is_right_aligned for row in rows)
            and all(row.past.prefix is None for row in rows)
            and [row.past.row for row in rows] == list(range(block.buffers.rows))
            and block.extendable
            and block.buffers.capacity >= block.width + width_new
        )

    def _forward(
        self, rows, buffers, width_past, input_ids, positions, mask, keep, prefix=None, views=None
    ) -> torch.Tensor:
        device = self.device
        width_new = input_ids.shape[1]
        cache = _AppendCache(buffers)
        shared = {} if views is None else {"shared_prefix": views}
        out = self.hf(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            **{self._cache_keyword: cache},
            logits_to_keep=keep,
            **shared,
        )
        cache.commit()
        self.stats.calls += 1
        self.stats.tokens += sum(len(row.new) for row in rows)

        block = KVBlock(buffers, width_past + width_new)
        for i, row in enumerate(rows):
            entry = self._entry_for(block, i, row, width_past, width_new)
            if prefix is not None:
                entry = KVEntry(entry.block, entry.row, entry.start, prefix.length + entry.length, prefix)
            self.cache.put(row.node, entry)
        return out.logits.float()

    def _row(self, node: TokenNode) -> _Row:
        entry, pending = cached_past(self.cache, node)
        return _Row(node, entry, pending)

    def _past_buffers(self, rows: list[_Row], width_new: int) -> tuple[KVBuffers, int]:
        """Buffers holding every row's past right-aligned to the returned width, with room for
        `width_new` more positions: the previous forward's own buffers when the batch continues
        exactly its rows, otherwise a copy."""
        width = max(row.past_length for row in rows)
        if width == 0:
            return KVBuffers(_capacity(width_new)), 0
        first = rows[0].past
        same_block = first is not None and all(
            row.past is not None
            and row.past.prefix is None
            and row.past.block is first.block
            and row.past.is_right_aligned
            for row in rows
        )
        if same_block:
            # Rows of one earlier forward (decoding, beam reordering): padding included, as it was.
            block, old = first.block, first.block.buffers
            width = block.width
            source = [row.past.row for row in rows]
            identity = source == list(range(old.rows))
            if identity and block.extendable and old.capacity >= width + width_new:
                return old, width
            # Grow only when the rows do not fit: a gather into same-sized buffers is one index_select.
            capacity = old.capacity if old.capacity >= width + width_new else _capacity(width + width_new)
            new = KVBuffers(capacity, width)
            index = torch.tensor(source, device=old.keys[0].device)
            if capacity == old.capacity:
                # One gather of whole buffers; positions past `width` are never read.
                new.keys = tuple(k.index_select(0, index) for k in old.keys)
                new.values = tuple(v.index_select(0, index) for v in old.values)
            else:
                grown = KVBuffers.zeros(old.keys[0], len(rows), capacity, len(old.keys))
                for dst, src in zip(grown.keys + grown.values, old.keys + old.values):
                    dst[:, :, :width] = src[index, :, :width]
                new.keys, new.values = grown.keys, grown.values
            return new, width

        some_past = next(row.past for row in rows if row.past is not None).block.buffers
        new = KVBuffers.zeros(some_past.keys[0], len(rows), _capacity(width + width_new), len(some_past.keys))
        # Stretches that end at the same place in the same block and go to the same place are copied
        # together, each group in one indexed copy per layer (positions before a row's stretch are its
        # padding, or its prefix, which is copied after). A row with a shared prefix copies it whole.
        groups: dict[tuple[int, int, int], tuple[KVBlock, list[int], list[int], list[int]]] = {}
        for i, row in enumerate(rows):
            e = row.past
            if e is None:
                continue
            parts = [(e.own(), width)] if e.prefix is None else [(e.own(), width), (e.prefix, width - e.own_length)]
            for part, to in parts:
                if part is None:
                    continue
                _, targets, sources, lengths = groups.setdefault(
                    (id(part.block), part.start + part.length, to), (part.block, [], [], [])
                )
                targets.append(i)
                sources.append(part.row)
                lengths.append(part.length)
        device = some_past.keys[0].device
        for (_, end, to), (block, targets, sources, lengths) in sorted(groups.items(), key=lambda g: -g[0][2]):
            dst_rows = torch.tensor(targets, device=device)
            src_rows = torch.tensor(sources, device=device)
            span = max(lengths)
            for dst, src in zip(new.keys + new.values, block.buffers.keys + block.buffers.values):
                dst[dst_rows, :, to - span : to] = src[src_rows, :, end - span : end]
        new.used = width
        return new, width

    @staticmethod
    def _entry_for(block: KVBlock, i: int, row: _Row, width_past: int, width_new: int) -> KVEntry:
        p, n = row.past_length, len(row.new)
        total = width_past + width_new
        if n == width_new or p == 0:
            return KVEntry(block, i, total - n - p if p == 0 else width_past - p, p + n)
        # Past and new tokens are separated by padding: keep a compact copy of this one row.
        past, new = slice(width_past - p, width_past), slice(total - n, total)
        keys = tuple(torch.cat([k[i : i + 1, :, past], k[i : i + 1, :, new]], 2) for k in block.buffers.keys)
        values = tuple(torch.cat([v[i : i + 1, :, past], v[i : i + 1, :, new]], 2) for v in block.buffers.values)
        compact = KVBuffers(p + n, p + n, keys, values)
        return KVEntry(KVBlock(compact, p + n), 0, 0, p + n)


def cache_keyword(hf_model) -> str:
    """The keyword `hf_model.forward` takes its KV cache by: `cache` since transformers renamed it
    (5.24 warns on every call that passes `past_key_values`), `past_key_values` in models written
    before. Checked once, because a keyword the forward does not declare would land in its `**kwargs`
    and be ignored: the model would silently run without the cache."""
    parameters = inspect.signature(hf_model.forward).parameters
    for keyword in ("cache", "past_key_values"):
        if keyword in parameters:
            return keyword
    raise ModelLoadError(
        f"{type(hf_model).__name__}.forward takes no KV cache (neither `cache` nor `past_key_values`); "
        "searchdec needs a causal LM that accepts one"
    )


def _capacity(needed: int) -> int:
    # Room to grow by half again (at least 32 positions): appends rarely reallocate.
    return needed + max(32, needed // 2)


class _AppendLayer(DynamicLayer):
    """A cache layer over `KVBuffers`: new keys/values are written in place after `length`.

    Its tensors are allocated on the first write when the buffers have none yet (a batch with no past).
    """

    def __init__(self, buffers: KVBuffers, index: int) -> None:
        super().__init__()
        self.buffers = buffers
        self.length = buffers.used
        self.keys_buf = buffers.keys[index] if buffers.keys else None
        self.values_buf = buffers.values[index] if buffers.values else None
        if self.keys_buf is not None and self.length:
            self.lazy_initialization(self.keys_buf, self.values_buf)
            self.keys = self.keys_buf[:, :, : self.length]
            self.values = self.values_buf[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.keys_buf is None:
            rows, heads, _, _ = key_states.shape
            capacity = self.buffers.capacity
            self.keys_buf = key_states.new_empty((rows, heads, capacity, key_states.shape[-1]))
            self.values_buf = value_states.new_empty((rows, heads, capacity, value_states.shape[-1]))
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self.keys_buf[:, :, self.length : end] = key_states
        self.values_buf[:, :, self.length : end] = value_states
        self.length = end
        self.keys = self.keys_buf[:, :, :end]
        self.values = self.values_buf[:, :, :end]
        return self.keys, self.values


class _AppendCache(DynamicCache):
    """A DynamicCache whose layers append into `buffers`; `commit()` records what the forward wrote.

    Every layer is a full (non-sliding) layer: entries must keep every position. Sliding-window
    attention is still applied, by the model's own masks.
    """

    def __init__(self, buffers: KVBuffers) -> None:
        super().__init__()
        self.buffers = buffers
        self.layers = [_AppendLayer(buffers, i) for i in range(len(buffers.keys))]

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(_AppendLayer(self.buffers, len(self.layers)))
        return self.layers[layer_idx].update(key_states, value_states, *args, **kwargs)

    def commit(self) -> None:
        self.buffers.keys = tuple(layer.keys_buf for layer in self.layers)
        self.buffers.values = tuple(layer.values_buf for layer in self.layers)
        self.buffers.used = self.layers[0].length


def _after(entry: KVEntry | None, shared: int) -> KVEntry | None:
    """The positions of `entry` after its first `shared` ones (one stretch), as an entry of their own."""
    if entry is None:
        return None
    if entry.prefix is not None:
        return entry.own()
    if entry.length == shared:
        return None
    return KVEntry(entry.block, entry.row, entry.start + shared, entry.length - shared)
