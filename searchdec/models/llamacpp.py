"""A GGUF-native runtime: llama.cpp (through `llama-cpp-python`) behind the model-runtime contract.

It loads a GGUF file as it is (no conversion, weights stay quantized) and keeps one llama.cpp
sequence per cached hypothesis in a unified KV cache, so a search tree is held the way llama.cpp
shares cells between sequences:
- a node's forward copies its nearest cached ancestor's sequence into a new sequence id
  (`llama_memory_seq_cp`: the cells are shared, nothing is copied), then feeds only the node's
  tokens after that ancestor, every node of the call in one `llama_decode` batch;
- `cache.discard(node)` removes its sequence (`llama_memory_seq_rm`): cells no sequence holds any
  more are free again;
- when sequence ids or cells run out, least-recently-used sequences are removed (their hypotheses
  are not lost: a later forward starts again from their nearest cached ancestor).

Logits are read for each node's last `keep` positions only. The tokenizer is the Hugging Face one
searchdec builds for the same GGUF, so token ids, the chat template, end-of-sequence ids and the
vocabulary bytes the grammar engines read are the torch runtime's. A token tree (`logits_tree`, for
speculative verification of several drafts) is one decode too: one sequence per leaf, each tree
token in the sequences of the leaves below it.

Install with `pip install 'searchdec[llamacpp]'` (llama-cpp-python builds llama.cpp from source
where PyPI has no wheel for the platform; on a 2-core machine that build takes 45-85 minutes, once:
pip keeps the wheel in its cache).
"""

from __future__ import annotations

import ctypes
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from searchdec.errors import ModelLoadError, PromptTooLongError
from searchdec.models.base import Runtime, TokenNode, cached_past
from searchdec.models.model import ForwardStats
from searchdec.models.vocab import token_bytes

MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ
DEFAULT_CONTEXT = 8192
DEFAULT_BATCH = 2048


def _llama():
    try:
        import llama_cpp
    except ImportError as error:
        raise ModelLoadError("runtime 'llama.cpp' needs llama-cpp-python: pip install 'searchdec[llamacpp]'") from error
    return llama_cpp


@dataclass(eq=False)
class SeqEntry:
    """A llama.cpp sequence id holding positions [0, length) of one hypothesis. A token tree's entry
    (`logits_tree`) holds one sequence per leaf instead: `branches[j]` is a sequence holding the path
    from the root to tree token j (and further down to a leaf); `seq` is one of them."""

    seq: int
    length: int
    branches: dict[int, int] | None = None

    @property
    def seqs(self) -> set[int]:
        return {self.seq} if self.branches is None else {self.seq, *self.branches.values()}

    def truncated(self, length: int) -> SeqEntry:
        """Its first `length` positions, as an entry to copy from (the same sequence id)."""
        if self.branches is not None:
            raise ValueError("a token tree's entry is not a sequence; keep a path of it with put_branch")
        return SeqEntry(self.seq, length)


class SequenceCache:
    """Which hypothesis (by identity) holds which llama.cpp sequence, least recently used first.

    The contract's cache (`discard`, `__contains__`, `__len__`, `get`), plus `put_branch` to keep
    the accepted path of a verified draft (chain or tree). Sequence ids come from a free list; when none is left,
    or the KV cells are full, the least recently used sequence is removed."""

    def __init__(self, memory, llama, size: int) -> None:
        self._memory = memory
        self._llama = llama
        self._entries: OrderedDict[int, tuple[object, SeqEntry]] = OrderedDict()
        self._free = list(range(size - 1, -1, -1))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return id(key) in self._entries

    def get(self, key: object) -> SeqEntry | None:
        item = self._entries.get(id(key))
        if item is None:
            return None
        self._entries.move_to_end(id(key))
        return item[1]

    def put(self, key: object, entry: SeqEntry) -> None:
        old = self._entries.pop(id(key), None)
        if old is not None and old[1] is not entry:
            self._release(old[1])
        self._entries[id(key)] = (key, entry)

    def discard(self, key: object) -> None:
        item = self._entries.pop(id(key), None)
        if item is not None:
            self._release(item[1])

    def clear(self) -> None:
        for _, entry in self._entries.values():
            self._release(entry)
        self._entries.clear()

    def put_branch(self, key: object, entry: SeqEntry, length: int, picked: list[int]) -> None:
        """Keep the first `length` positions of `entry` and then the tree tokens `picked` (a path from
        the tree's root, as verification accepted it) as `key`'s sequence."""
        if entry.branches is None:
            if picked != list(range(len(picked))):
                raise ValueError(f"entry is a sequence, so the kept path must be 0, 1, ..., got {picked}")
            source = entry
        else:
            source = SeqEntry(entry.branches[picked[-1]] if picked else entry.seq, length + len(picked))
        self.put(key, self.new_sequence(source, length + len(picked)))

    def new_sequence(self, source: SeqEntry | None, length: int, pinned: Sequence[SeqEntry] = ()) -> SeqEntry:
        """A fresh sequence id holding `source`'s first `length` positions (shared cells)."""
        while not self._free:
            if not self.evict_one(pinned):
                raise RuntimeError(
                    f"all {MAX_SEQUENCES} llama.cpp sequences are in use by this batch; forward fewer at once"
                )
        entry = SeqEntry(self._free.pop(), 0)
        if source is not None and length:
            self._llama.llama_memory_seq_cp(self._memory, source.seq, entry.seq, 0, length)
            entry.length = length
        return entry

    def evict_one(self, pinned: Sequence[SeqEntry] = ()) -> bool:
        """Remove the least recently used sequence not in `pinned`; False when there is none."""
        keep = set().union(*(entry.seqs for entry in pinned))
        for key_id, (_, entry) in self._entries.items():
            if not entry.seqs & keep:
                del self._entries[key_id]
                self._release(entry)
                return True
        return False

    def _release(self, entry: SeqEntry) -> None:
        for seq in entry.seqs:
            self._llama.llama_memory_seq_rm(self._memory, seq, -1, -1)
            self._free.append(seq)


@dataclass
class _Row:
    node: object
    past: SeqEntry | None
    new: list[int]


class LlamaCppModel(Runtime):
    """A GGUF model run by llama.cpp, with a Hugging Face tokenizer for the same vocabulary."""

    def __init__(
        self,
        gguf_path: str | Path,
        tokenizer,
        name: str = "",
        context: int | None = None,
        threads: int | None = None,
        batch_tokens: int = DEFAULT_BATCH,
        flash_attention: bool | None = None,
    ) -> None:
        """`context`: KV cells shared by all hypotheses (default: the model's trained context, at most
        8192); `threads`: CPU threads for a decode (default: all cores); `batch_tokens`: tokens per
        `llama_decode` call (longer batches are split); `flash_attention`: llama.cpp's fused attention
        (None: its own choice, which is on for CPU: faster, e.g. 70 vs 52 tokens/s here, but a sum
        over cells in another order moves logits by up to ~0.7 on the default model when a cache hit
        places cells out of position order, where without it the same reuse stays within ~0.05)."""
        llama = _llama()
        self._llama = llama
        self.tokenizer = tokenizer
        self.name = name or Path(gguf_path).stem
        self.path = str(gguf_path)
        llama.llama_backend_init()
        _quiet(llama)
        params = llama.llama_model_default_params()
        params.n_gpu_layers = 0
        self._model = llama.llama_model_load_from_file(self.path.encode(), params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {self.path}")
        self._vocab = llama.llama_model_get_vocab(self._model)
        self._n_vocab = llama.llama_vocab_n_tokens(self._vocab)
        trained = llama.llama_model_n_ctx_train(self._model)
        n_ctx = int(context or min(trained, DEFAULT_CONTEXT))
        threads = int(threads or os.cpu_count() or 1)
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = batch_tokens
        cparams.n_ubatch = min(batch_tokens, 512)
        cparams.n_seq_max = MAX_SEQUENCES
        cparams.kv_unified = True  # one cell pool for every sequence: seq_cp shares cells
        if flash_attention is not None:
            cparams.flash_attn_type = int(flash_attention)  # else llama.cpp's auto choice (on, on CPU)
        cparams.n_threads = cparams.n_threads_batch = threads
        self._ctx = llama.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelLoadError(f"llama.cpp could not create a context of {n_ctx} cells for {self.path}")
        self._n_ctx = llama.llama_n_ctx(self._ctx)
        self._trained = trained
        self._batch_tokens = batch_tokens
        self._batch = llama.llama_batch_init(batch_tokens, 0, MAX_SEQUENCES)  # a tree token: several
        size = (batch_tokens,)
        self._tokens, self._positions, self._seq_counts, self._wanted = (
            np.ctypeslib.as_array(field, shape=size)
            for field in (self._batch.token, self._batch.pos, self._batch.n_seq_id, self._batch.logits)
        )
        self._memory = llama.llama_get_memory(self._ctx)
        self.cache = SequenceCache(self._memory, llama, MAX_SEQUENCES)
        self.stats = ForwardStats()
        self.threads = threads

    def __repr__(self) -> str:
        return f"LlamaCppModel({self.name!r}, threads={self.threads}, context={self._n_ctx})"

    def close(self) -> None:
        """Free the llama.cpp context and model (also done when the object is collected)."""
        llama = self._llama
        if getattr(self, "_batch", None) is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            llama.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            llama.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass

    # --- facts about the model -------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # of the logits; the weights are the GGUF's own quantization

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    @property
    def context_window(self) -> int:
        return min(self._trained, self._n_ctx)

    @cached_property
    def eos_token_ids(self) -> frozenset[int]:
        """The GGUF's end-of-sequence token and the tokenizer's (what the torch runtime reads from the
        converted config: the two runtimes end at the same tokens)."""
        ids = {self._llama.llama_vocab_eos(self._vocab), self.tokenizer.eos_token_id}
        return frozenset(i for i in ids if i is not None and 0 <= i < self._n_vocab)

    @cached_property
    def vocab_bytes(self) -> list[bytes]:
        return token_bytes(self.tokenizer, self.vocab_size)

    # --- the hot path ----------------------------------------------------------------------

    def logits(self, nodes: Sequence[TokenNode]) -> torch.Tensor:
        return self.logits_last(nodes, 1)[:, 0]

    def logits_last(self, nodes: Sequence[TokenNode], keep: int) -> torch.Tensor:
        """Logits ([len(nodes), keep, vocab]) at each node's last `keep` positions; a node forwarding
        fewer than `keep` tokens has zeros in its first entries."""
        if not nodes:
            raise ValueError("logits() needs at least one hypothesis")
        rows = [self._row(node) for node in nodes]
        width = max(len(row.new) for row in rows)
        if not 1 <= keep <= width:
            raise ValueError(f"keep must be in [1, {width}] (the tokens this batch forwards), got {keep}")
        pinned = [row.past for row in rows if row.past is not None]
        sequences = []
        for row in rows:
            sequence = self._sequence_for(row, len(row.new), pinned)
            pinned.append(sequence)
            sequences.append(sequence)
        items = []  # (token, position, sequence ids, (row, slot) of its logits or None), in batch order
        for i, (row, sequence) in enumerate(zip(rows, sequences)):
            n, start = len(row.new), sequence.length
            items.extend(
                (token, start + j, (sequence.seq,), (i, keep - n + j) if j >= n - keep else None)
                for j, token in enumerate(row.new)
            )
        out = self._run(items, (len(rows), keep), pinned)
        for row, sequence in zip(rows, sequences):
            sequence.length += len(row.new)
            self.cache.put(row.node, sequence)
        return out

    def logits_tree(self, node: TokenNode, parents: Sequence[int]) -> torch.Tensor:
        """Logits of the token tree `node.new_tokens` in one decode ([1 + len(parents), vocab], as the
        contract says): one sequence per leaf, each tree token in the sequences of the leaves below it,
        at position len(root) + its depth, so it attends to the root and its own ancestors only (llama.cpp
        masks a token by its first sequence, which holds exactly that path). The entry kept for `node`
        is the tree's (keep a path of it with `cache.put_branch`, then discard it)."""
        size = len(parents)
        if size != len(node.new_tokens) or size == 0:
            raise ValueError(f"need one parent per tree token, got {size} for {len(node.new_tokens)} tokens")
        depth: list[int] = []
        below: list[list[int]] = [[] for _ in range(size)]
        for j, parent in enumerate(parents):
            if not -1 <= parent < j:
                raise ValueError(f"parents[{j}] must be -1 or an earlier token's index, got {parent}")
            depth.append(0 if parent < 0 else depth[parent] + 1)
            if parent >= 0:
                below[parent].append(j)
        row = self._row(node)
        chain = len(row.new) - size  # the root's own tokens not cached yet
        if chain < 1:
            raise ValueError("the tree's root must have a token to forward (its last one is recomputed if cached)")
        pinned = [row.past] if row.past is not None else []
        leaves = {j: self._sequence_for(row, chain + depth[j] + 1, pinned) for j in range(size) if not below[j]}
        pinned.extend(leaves.values())
        seqs_of: list[list[int]] = [[] for _ in range(size)]
        for leaf, sequence in leaves.items():
            j = leaf
            while j >= 0:
                seqs_of[j].append(sequence.seq)
                j = parents[j]
        start = 0 if row.past is None else row.past.length
        every = tuple(sequence.seq for sequence in leaves.values())
        items = [
            (token, start + i, every, (0, 0) if i == chain - 1 else None) for i, token in enumerate(row.new[:chain])
        ]
        items.extend(
            (token, start + chain + depth[j], tuple(seqs_of[j]), (0, 1 + j)) for j, token in enumerate(row.new[chain:])
        )
        out = self._run(items, (1, 1 + size), pinned)
        branches = {j: seqs_of[j][0] for j in range(size)}
        self.cache.put(node, SeqEntry(next(iter(every)), start + len(row.new), branches))
        return out[0]

    def _sequence_for(self, row: _Row, n_new: int, pinned: list[SeqEntry]) -> SeqEntry:
        """A new sequence holding `row`'s past, with room checked for `n_new` more positions."""
        start = 0 if row.past is None else row.past.length
        if start + n_new > self.context_window:
            raise PromptTooLongError(
                f"a hypothesis of {start + n_new} tokens exceeds model {self.name!r}'s context window "
                f"of {self.context_window} tokens"
            )
        return self.cache.new_sequence(row.past, start, pinned)

    def _run(self, items: list, shape: tuple[int, int], pinned: list[SeqEntry]) -> torch.Tensor:
        """Decode `items` in batches of at most `batch_tokens`, gathering the wanted logits."""
        # numpy's zeros (calloc) and copies: torch's fill of a small tensor wakes its thread pool (ms here)
        out = np.zeros((*shape, self._n_vocab), dtype=np.float32)
        for chunk in range(0, len(items), self._batch_tokens):
            self._decode(items[chunk : chunk + self._batch_tokens], out, pinned)
        self.stats.calls += 1
        self.stats.tokens += len(items)
        return torch.from_numpy(out)

    def _decode(self, items: list, out: np.ndarray, pinned: list[SeqEntry]) -> None:
        llama, batch = self._llama, self._batch
        targets = []
        for k, (token, position, seqs, target) in enumerate(items):
            self._tokens[k] = token
            self._positions[k] = position
            self._seq_counts[k] = len(seqs)
            ids = batch.seq_id[k]
            for m, seq in enumerate(seqs):
                ids[m] = seq
            self._wanted[k] = target is not None
            if target is not None:
                targets.append(target)
        batch.n_tokens = len(items)
        while (code := llama.llama_decode(self._ctx, batch)) == 1:  # no room in the KV cells
            if not self.cache.evict_one(pinned):
                raise RuntimeError(
                    f"llama.cpp's KV cache ({self._n_ctx} cells) cannot hold this batch; load with a larger context="
                )
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code}")
        if targets:
            pointer = llama.llama_get_logits(self._ctx)
            logits = np.ctypeslib.as_array(pointer, shape=(len(targets), self._n_vocab))
            for k, (i, at) in enumerate(targets):
                out[i, at] = logits[k]

    def _row(self, node: TokenNode) -> _Row:
        entry, pending = cached_past(self.cache, node)
        return _Row(node, entry, pending)


def _quiet(llama) -> None:
    """Silence llama.cpp's logging to stderr (set once per process; the callback must stay alive)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = llama.llama_log_callback(lambda level, text, data: None)
        llama.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p())


_LOG_CALLBACK = None
