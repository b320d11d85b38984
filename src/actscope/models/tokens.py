"""The text of single tokens, for tables and reports.

``tokenizer.decode([i])`` is the natural text of one token, but a token that holds part of a
multi-byte UTF-8 character (byte-level BPE pieces such as GPT-2's ``Ð``, SentencePiece byte
tokens such as ``<0xD0>``) decodes to U+FFFD, which hides which token it was. Such tokens are
shown by their bytes instead, the undecodable ones as ``\\xNN`` escapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

__all__ = ["token_texts", "visible"]

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SHOWN = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}


@lru_cache(maxsize=1)
def _byte_level() -> dict[str, int]:
    """GPT-2's byte-level alphabet (character -> byte), from transformers' converter."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {ch: b for b, ch in bytes_to_unicode().items()}


def _piece_bytes(piece: str) -> bytes | None:
    """The bytes of a vocabulary piece: SentencePiece ``<0xNN>`` tokens, or byte-level BPE
    pieces whose every character is in the byte-level alphabet and one stands for a byte
    >= 0x80 (the part of a multi-byte character; all-ASCII pieces such as ``<unk>`` are
    names, not bytes); ``None`` otherwise."""
    m = _BYTE_TOKEN.fullmatch(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    table = _byte_level()
    if all(ch in table for ch in piece) and any(table[ch] >= 0x80 for ch in piece):
        return bytes(table[ch] for ch in piece)
    return None


def token_texts(tokenizer: Any, ids: Iterable[int]) -> list[str]:
    """Text of each token id on its own (``""`` for negative ids, which mark no token).

    ``decode([i])`` where that is valid text; where it holds U+FFFD (part of a multi-byte
    character), the piece's bytes decoded with undecodable bytes as ``\\xNN`` escapes, e.g.
    ``' \\xeb'`` for the byte-level piece ``Ġë``.
    """
    cache: dict[int, str] = {}
    out = []
    for i in ids:
        i = int(i)
        if i not in cache:
            cache[i] = _one(tokenizer, i)
        out.append(cache[i])
    return out


def _one(tokenizer: Any, i: int) -> str:
    if i < 0:
        return ""
    text = tokenizer.decode([i])
    if "\ufffd" not in text:
        return text
    piece = tokenizer.convert_ids_to_tokens(i)
    raw = _piece_bytes(piece) if isinstance(piece, str) else None
    if raw is None:
        return text
    return raw.decode("utf-8", errors="backslashreplace")


def visible(text: str, limit: int | None = None) -> str:
    """``text`` with whitespace made visible (space ␣, newline ↵, tab ⇥, CR ␍) and other
    control characters escaped, cut to ``limit`` characters (an ellipsis marks the cut)."""
    shown = "".join(
        _SHOWN.get(ch, ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii"))
        for ch in text
    )
    if limit is not None and len(shown) > limit:
        shown = shown[: max(0, limit - 1)] + "\u2026"
    return shown or "\u2205"
