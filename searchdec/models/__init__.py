"""Models: loading (aliases, local paths, packaged GGUFs), batched forwards, the prefix KV cache."""

from searchdec.models.cache import KVBlock, KVEntry, PrefixCache
from searchdec.models.loading import ALIASES, load
from searchdec.models.model import ForwardStats, Model

__all__ = ["ALIASES", "ForwardStats", "KVBlock", "KVEntry", "Model", "PrefixCache", "load"]
