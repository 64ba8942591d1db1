"""Token ids as bytes: what a grammar engine matches against.

Byte-level BPE tokenizers (GPT-2 style) spell bytes with printable stand-in characters; SentencePiece
tokenizers use `▁` for a space and `<0xAB>` tokens for raw bytes. Special tokens map to their text.
Ids past the tokenizer's length (a padded embedding) map to b"".
"""

from __future__ import annotations

import re
from functools import lru_cache

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    # The GPT-2 byte-to-printable map: printable Latin-1 bytes stand for themselves, the rest are
    # shifted past 255 in order.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    shift = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + shift)
            shift += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


def token_bytes(tokenizer, vocab_size: int) -> list[bytes]:
    """Bytes of every id in [0, vocab_size)."""
    out = [b""] * vocab_size
    special = set(getattr(tokenizer, "all_special_ids", []))
    special.update(getattr(tokenizer, "added_tokens_decoder", {}))  # computed per access: read it once
    byte_level = _is_byte_level(tokenizer)
    table = _unicode_to_byte()
    for piece, token_id in tokenizer.get_vocab().items():
        if token_id >= vocab_size:
            continue
        if token_id in special:
            out[token_id] = piece.encode("utf-8")
        elif byte_level:
            try:
                out[token_id] = bytes(table[ch] for ch in piece)
            except KeyError:
                out[token_id] = piece.encode("utf-8")
        elif match := _BYTE_TOKEN.match(piece):
            out[token_id] = bytes([int(match.group(1), 16)])
        else:
            out[token_id] = piece.replace("▁", " ").encode("utf-8")
    return out
