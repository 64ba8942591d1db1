"""Prefix KV cache: the keys and values already computed for each hypothesis, kept so that a child
costs a forward over its own new tokens only.

An entry belongs to one hypothesis (any object with `parent` and `new_tokens`, compared by identity)
and covers that hypothesis's whole sequence. Entries point into the key/value buffers of the batch
forward that produced them (a `KVBlock` of `KVBuffers`), so storing one costs nothing; buffers are
freed when their last entry goes. The cache is bounded in bytes (buffers counted once, spare
capacity included) and evicts least-recently-used entries; the buffers of the latest forward are
never evicted, so the running decode always finds its parents. A hypothesis
whose entry was evicted is not lost: the model recomputes from its nearest cached ancestor.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(eq=False)
class KVBuffers:
    """Per-layer key/value storage [rows, kv_heads, capacity, head_dim] with room to grow.

    Positions [0, used) are written once and never change; a forward that continues exactly these
    rows appends at `used` in place, so decoding does not copy the cache at every step (transformers'
    DynamicCache concatenates, copying all of it). Only one forward may extend a given `used`: any
    other reader of the same rows copies them first. The tensors are allocated by the first forward
    that writes them when `keys` is empty.
    """

    capacity: int
    used: int = 0
    keys: tuple[torch.Tensor, ...] = ()
    values: tuple[torch.Tensor, ...] = ()

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values))

    @classmethod
    def zeros(cls, like: torch.Tensor, rows: int, capacity: int, n_layers: int) -> KVBuffers:
        shape = (rows, like.shape[1], capacity, like.shape[3])
        return cls(
            capacity,
            0,
            tuple(like.new_zeros(shape) for _ in range(n_layers)),
            tuple(like.new_zeros(shape) for _ in range(n_layers)),
        )


@dataclass(eq=False)
class KVBlock:
    """The first `width` positions of `buffers` as one batch forward left them."""

    buffers: KVBuffers
    width: int

    @property
    def extendable(self) -> bool:
        """True when nothing has been appended after this block's positions yet."""
        return self.buffers.used == self.width


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
        self._refs: dict[int, int] = {}  # entries per KVBuffers
        self._latest: KVBuffers | None = None
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
        storage = entry.block.buffers
        if id(storage) not in self._refs:
            self.bytes += storage.nbytes
            self._refs[id(storage)] = 0
        self._refs[id(storage)] += 1
        self._latest = storage
        self._evict()

    def put_cut(self, key: object, entry: KVEntry, length: int) -> None:
        """Store the first `length` positions of `entry` (not itself stored) as `key`'s entry. When
        `entry` is the single row its buffers were last extended with and no stored entry reaches
        past the cut, the buffers are rewound to the cut, so the next forward of `key`'s children
        appends there in place, overwriting the dropped positions (speculative decoding drops its
        rejected drafts this way); otherwise the entry is a shorter view, which a forward copies."""
        block, storage = entry.block, entry.block.buffers
        end = entry.start + length
        reaches_past = any(e.block.buffers is storage and e.start + e.length > end for e in self._entries.values())
        if block.extendable and storage.rows == 1 and entry.is_right_aligned and not reaches_past:
            storage.used = end
            self.put(key, KVEntry(KVBlock(storage, end), entry.row, entry.start, length))
        else:
            self.put(key, entry.truncated(length))

    @torch.inference_mode()
    def put_branch(self, key: object, entry: KVEntry, length: int, picked: list[int]) -> None:
        """Store as `key`'s entry the first `length` positions of `entry` (not itself stored) followed
        by its positions length + i for i in `picked` (increasing): one path of a token tree that
        `Model.logits_tree` forwarded, each token already at the position its depth gave it. The picked
        positions are moved together in place when the buffers can be rewound (as `put_cut`), else
        copied into a compact entry of their own."""
        if picked == list(range(len(picked))):
            self.put_cut(key, entry, length + len(picked))
            return
        if any(b <= a for a, b in zip(picked, picked[1:])) or (picked and not 0 <= picked[0] < entry.length - length):
            raise ValueError(f"picked positions must increase within the entry, got {picked}")
        block, storage = entry.block, entry.block.buffers
        end = entry.start + length + len(picked)
        source = torch.tensor([entry.start + length + i for i in picked], device=storage.keys[0].device)
        reaches_past = any(
            e.block.buffers is storage and e.start + e.length > entry.start + length for e in self._entries.values()
        )
        if block.extendable and storage.rows == 1 and entry.is_right_aligned and not reaches_past:
            for buffer in storage.keys + storage.values:
                buffer[:, :, entry.start + length : end] = buffer[:, :, source]
            storage.used = end
            self.put(key, KVEntry(KVBlock(storage, end), entry.row, entry.start, length + len(picked)))
            return
        kept = torch.cat([torch.arange(entry.start, entry.start + length, device=source.device), source])
        row = slice(entry.row, entry.row + 1)
        keys = tuple(k[row].index_select(2, kept) for k in storage.keys)
        values = tuple(v[row].index_select(2, kept) for v in storage.values)
        size = len(kept)
        self.put(key, KVEntry(KVBlock(KVBuffers(size, size, keys, values), size), 0, 0, size))

    def discard(self, key: object) -> None:
        """Forget `key`'s entry (a search calls this for hypotheses it will never expand again)."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        storage = entry.block.buffers
        self._refs[id(storage)] -= 1
        if self._refs[id(storage)] == 0:
            del self._refs[id(storage)]
            self.bytes -= storage.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self._refs.clear()
        self._latest = None
        self.bytes = 0

    def _evict(self) -> None:
        if self.bytes <= self.max_bytes:
            return
        for key in list(self._entries):
            if self.bytes <= self.max_bytes:
                break
            if self._entries[key].block.buffers is self._latest:
                continue
            self.discard(key)
            self.evictions += 1
