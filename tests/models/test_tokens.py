"""Single-token text: multi-byte pieces shown by their bytes, whitespace made visible."""

from __future__ import annotations

from actscope.models.tiny import byte_tokenizer
from actscope.models.tokens import token_texts, visible


def test_byte_level_pieces_of_a_multibyte_character_show_their_bytes() -> None:
    tok = byte_tokenizer()
    ids = tok("ё a\n", add_special_tokens=False).input_ids  # ё is two UTF-8 bytes
    assert [tok.decode([i]) for i in ids][:2] == ["\ufffd", "\ufffd"]  # what decode alone gives
    assert token_texts(tok, ids) == ["\\xd1", "\\x91", " ", "a", "\n"]
    assert token_texts(tok, [-1, ids[3]]) == ["", "a"]  # -1: no token


class _SentencePieceLike:
    """decode/convert_ids_to_tokens of a SentencePiece vocabulary with byte-fallback tokens."""

    def __init__(self) -> None:
        self.pieces = {0: "<0xD0>", 1: "\u2581the", 2: "<unk>"}

    def decode(self, ids: list[int]) -> str:
        piece = self.pieces[ids[0]]
        return "\ufffd" if piece.startswith("<0x") or piece == "<unk>" else piece[1:]

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.pieces[i]


def test_byte_fallback_tokens_and_unknown_pieces() -> None:
    tok = _SentencePieceLike()
    # the byte token by its byte; a piece that is not bytes keeps decode's text
    assert token_texts(tok, [0, 1, 2, 0]) == ["\\xd0", "the", "\ufffd", "\\xd0"]


def test_visible_whitespace_controls_and_cut() -> None:
    assert visible(" a\tb\n\r") == "\u2423a\u21e5b\u21b5\u240d"
    assert visible("x\x00") == "x\\x00"
    assert visible("") == "\u2205"
    assert visible("abcdefgh", 5) == "abcd\u2026" and visible("abcd", 5) == "abcd"
