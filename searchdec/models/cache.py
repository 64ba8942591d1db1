"""Prefix KV cache: the keys and values already computed for each hypothesis, kept so that a child
costs a forward over its own new tokens only.

An entry belongs to one hypothesis (any object with `parent` and `new_tokens`, compared by identity)
and covers that hypothesis's whole sequence. Entries are views into the key/value tensors of the
batch forward that produced them (a `KVBlock`), so storing one costs nothing; a block is freed when
its last entry goes. The cache is bounded in bytes and evicts least-recently-used entries; the block
of the latest forward is never evicted, so the running decode always finds its parents. A hypothesis
whose entry was evicted is not lost: the model recomputes from its nearest cached ancestor.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(eq=False)
class KVBlock:
    """Per-layer (keys, values) of one batch forward, each shaped [batch, kv_heads, T, head_dim]."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)

    @property
    def width(self) -> int:
        return self.layers[0][0].shape[-2]


@dataclass(frozen=True)
class KVEntry:
    """Row `row` of `block`, positions [start, start + length): one hypothesis's whole sequence."""

    block: KVBlock
    row: int
    start: int
    length: int

    @property
    def is_right_aligned(self) -> bool:
        """True when the row's valid positions run to the block's end (only padding before them)."""
        return self.start + self.length == self.block.width

    def truncated(self, length: int) -> KVEntry:
        return KVEntry(self.block, self.row, self.start, length)


class PrefixCache:
    """Byte-bounded LRU map from hypothesis to its `KVEntry`."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"cache max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[object, KVEntry] = OrderedDict()
        self._block_refs: dict[int, int] = {}
        self._latest: KVBlock | None = None
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: object) -> KVEntry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: object, entry: KVEntry) -> None:
        self.discard(key)
        self._entries[key] = entry
        block_id = id(entry.block)
        if block_id not in self._block_refs:
            self.bytes += entry.block.nbytes
            self._block_refs[block_id] = 0
        self._block_refs[block_id] += 1
        self._latest = entry.block
        self._evict()

    def discard(self, key: object) -> None:
        """Forget `key`'s entry (a search calls this for hypotheses it will never expand again)."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        block_id = id(entry.block)
        self._block_refs[block_id] -= 1
        if self._block_refs[block_id] == 0:
            del self._block_refs[block_id]
            self.bytes -= entry.block.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self._block_refs.clear()
        self._latest = None
        self.bytes = 0

    def _evict(self) -> None:
        if self.bytes <= self.max_bytes:
            return
        for key in list(self._entries):
            if self.bytes <= self.max_bytes:
                break
            if self._entries[key].block is self._latest:
                continue
            self.discard(key)
            self.evictions += 1
