"""Clean / corrupted prompt pairs for patching, tokenized consistently.

A pair is two prompts of the same token length that differ in a few tokens, with two
continuation tokens: ``answer`` (what the clean prompt should produce) and ``wrong`` (what the
corrupted prompt should produce). The metric of a run is the logit difference at the last
position, ``LD = logit[answer] - logit[wrong]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actscope.analyses.explain.tokens import encode, target_id
from actscope.datasets.explain import read_jsonl, require
from actscope.errors import DataError
from actscope.models.tokens import token_texts


@dataclass(frozen=True)
class PromptPair:
    """One clean / corrupted prompt pair with its two continuations."""

    clean: str
    corrupt: str
    answer: str
    wrong: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenizedPair:
    """A pair after tokenization: equal-length id lists and the two scored token ids."""

    clean_ids: list[int]
    corrupt_ids: list[int]
    answer_id: int
    wrong_id: int
    tokens: list[str]

    @property
    def length(self) -> int:
        return len(self.clean_ids)


def load_pairs(source: str | Path, limit: int | None = None) -> list[PromptPair]:
    """Pairs from a shipped dataset name (``ioi``) or a JSONL file with fields
    ``clean``, ``corrupt``, ``answer``, ``wrong`` (other fields are kept as metadata)."""
    rows = read_jsonl(source)
    require(rows, ("clean", "corrupt", "answer", "wrong"), str(source))
    keys = {"clean", "corrupt", "answer", "wrong"}
    pairs = [
        PromptPair(
            str(r["clean"]),
            str(r["corrupt"]),
            str(r["answer"]),
            str(r["wrong"]),
            {k: v for k, v in r.items() if k not in keys},
        )
        for r in rows
    ]
    return pairs[:limit] if limit else pairs


def tokenize_pairs(tokenizer: Any, pairs: Sequence[PromptPair]) -> list[TokenizedPair]:
    """Tokenize both prompts with the same call; raise when lengths or answers do not fit.

    Patching replaces position p of one run by position p of the other, so both prompts must
    have the same number of tokens, and the two scored tokens must differ.
    """
    if not pairs:
        raise DataError("no prompt pairs given")
    out = []
    for i, p in enumerate(pairs):
        c, x = encode(tokenizer, p.clean), encode(tokenizer, p.corrupt)
        if len(c) != len(x):
            raise DataError(
                f"pair {i}: clean and corrupt prompts tokenize to {len(c)} and {len(x)} tokens; "
                "patching needs equal lengths (swap tokens of equal length)"
            )
        a, w = target_id(tokenizer, p.answer), target_id(tokenizer, p.wrong)
        if a == w:
            raise DataError(
                f"pair {i}: answer {p.answer!r} and wrong {p.wrong!r} start with the same token"
            )
        out.append(TokenizedPair(c, x, a, w, token_texts(tokenizer, c)))
    return out
