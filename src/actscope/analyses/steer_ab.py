"""A/B behaviour scores of held-out items, unsteered and under steering.

The prompt of an item is its question formatted for the assistant; the *response* starts after
the chat template's assistant header. Two scores, both in [0, 1] (0.5 = indifferent):

* ``letter`` (CAA): the response is ``"("``; with ``p`` the next-token distribution after it,
  ``score = p(matching letter) / (p(A) + p(B))``.
* ``answer``: the response is the text of a choice (parsed from the ``(A) ...`` / ``(B) ...``
  lines of the question); with ``L(x) = sum_t log p(x_t | prompt, x_<t)`` the summed
  log-likelihood of a choice text, ``score = p(match) / (p(match) + p(other))
  = sigmoid(L(match) - L(other))``. It measures the same preference without asking the model to
  bind a letter to a choice, which small models cannot do (SmolLM2-135M scores 0.50 on trivial
  letter items, see docs/steering.md).

Positions of a steering are relative to the prompt end (the last template token), so the
window "after the instruction" (:func:`~actscope.interventions.steering.instruction_window`)
covers the template's assistant header and the whole response. When a window starts after the
user message, the unsteered prefix of each batch (everything up to the end of the user message)
is run once with a KV cache and only the rest is re-run per steering configuration: the same
numbers as full forward passes, since steering changes no earlier position.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor

from actscope.capture import forward, position_ids
from actscope.errors import ActscopeError, DataError
from actscope.interventions.steering.apply import Steering, Window, parse_positions
from actscope.interventions.steering.datasets import ABItem, ab_letters, chat_prompt, has_template
from actscope.interventions.steering.encoding import pad_id_of
from actscope.interventions.steering.vector import SteeringVector

ScoreKind = Literal["letter", "answer"]
Progress = Callable[[int], None] | None
_CHOICE = re.compile(r"^\s*\(([A-Z])\)\s*(.+?)\s*$", re.MULTILINE)


def letter_ids(tokenizer: Any, letters: Sequence[str]) -> dict[str, int]:
    """Token id of each answer letter when it follows ``"("`` (one token each, or an error)."""
    base = tokenizer("(", add_special_tokens=False)["input_ids"]
    out = {}
    for letter in letters:
        ids = tokenizer("(" + letter, add_special_tokens=False)["input_ids"]
        if ids[: len(base)] != base or len(ids) != len(base) + 1:
            raise ActscopeError(f"the tokenizer does not split '({letter}' into '(' and '{letter}'")
        out[letter] = ids[-1]
    return out


def choices(item: ABItem) -> dict[str, str]:
    """``{letter: text}`` of the ``(A) text`` lines of an item's question."""
    found = dict(_CHOICE.findall(item.question))
    for letter in (item.matching, item.not_matching):
        if letter not in found:
            raise DataError(f"cannot find the '({letter}) ...' choice line in an A/B question")
    return found


@dataclass
class _Batch:
    """Prompts + responses split into a left-padded prefix (up to the end of the user message)
    and a right-padded suffix (template header, then the response)."""

    prefix: Tensor
    prefix_mask: Tensor
    suffix: Tensor
    suffix_mask: Tensor
    response: Tensor  # (B, Ls) bool: suffix tokens that belong to the response
    n_header: int  # fewest template tokens between the user message and the response

    def to(self, device: torch.device) -> _Batch:
        t = [
            x.to(device)
            for x in (self.prefix, self.prefix_mask, self.suffix, self.suffix_mask, self.response)
        ]
        return _Batch(*t, self.n_header)  # type: ignore[arg-type]

    @property
    def mask(self) -> Tensor:
        return torch.cat([self.prefix_mask, self.suffix_mask], dim=1)

    @property
    def prompt_lengths(self) -> Tensor:
        """(B,) real prompt tokens of each row (prefix + template header)."""
        return self.prefix_mask.sum(1) + (self.suffix_mask.bool() & ~self.response).sum(1)


def _build(lm: Any, questions: Sequence[str], responses: Sequence[str], chat: bool) -> _Batch:
    tok = lm.tokenizer
    special = not (chat and has_template(tok))
    pre, suf, resp, header = [], [], [], []
    for q, r in zip(questions, responses, strict=True):
        prompt, (_, end) = chat_prompt(tok, q, chat)
        enc = tok(prompt + r, add_special_tokens=special, return_offsets_mapping=True)
        ids, offs = enc["input_ids"], enc["offset_mapping"]
        cut = sum(1 for a, _ in offs if a < end)
        pre.append(ids[:cut])
        suf.append(ids[cut:])
        flags = [a >= len(prompt) for a, _ in offs[cut:]]
        resp.append(flags)
        header.append(sum(1 for f in flags if not f))
    pad = pad_id_of(tok)
    lp, ls = max(map(len, pre)), max(map(len, suf))
    b = len(pre)
    prefix = torch.full((b, lp), pad, dtype=torch.long)
    pmask = torch.zeros((b, lp), dtype=torch.long)
    suffix = torch.full((b, ls), pad, dtype=torch.long)
    smask = torch.zeros((b, ls), dtype=torch.long)
    rflags = torch.zeros((b, ls), dtype=torch.bool)
    for i in range(b):
        if pre[i]:
            prefix[i, lp - len(pre[i]) :] = torch.tensor(pre[i])
            pmask[i, lp - len(pre[i]) :] = 1
        suffix[i, : len(suf[i])] = torch.tensor(suf[i])
        smask[i, : len(suf[i])] = 1
        rflags[i, : len(suf[i])] = torch.tensor(resp[i], dtype=torch.bool)
    return _Batch(prefix, pmask, suffix, smask, rflags, min(header))


class _Runner:
    """Runs the suffix of a batch under a steering; caches the unsteered prefix when allowed."""

    def __init__(self, model: Any, batch: _Batch, win: Window) -> None:
        self.model, self.b = model, batch
        mask = batch.mask
        self.pos = position_ids(mask)
        self.cut = batch.prefix.shape[1]
        self.cached = (
            win.start is not None
            and batch.n_header >= 1
            and win.start >= -(batch.n_header - 1)
            and self.cut > 0
        )
        self.cache: Any = None
        if self.cached:
            with torch.inference_mode():
                out = model(
                    input_ids=batch.prefix,
                    attention_mask=batch.prefix_mask,
                    position_ids=self.pos[:, : self.cut],
                    use_cache=True,
                )
            self.cache, self.last = out.past_key_values, out.logits[:, -1:]

    def __call__(self, st: Steering | None) -> tuple[Tensor, Tensor]:
        """Outputs ``(before, out)``: logits at the last prefix position (B, 1, V) and at every
        suffix position (B, Ls, V). A steering must be attached; its prompt is pinned here."""
        b, mask = self.b, self.b.mask
        if st is not None:
            st.set_prompt(mask, lengths=b.prompt_lengths, past=self.cut if self.cached else 0)
        if self.cached:
            out = self.model(
                input_ids=b.suffix,
                attention_mask=mask,
                position_ids=self.pos[:, self.cut :],
                past_key_values=copy.deepcopy(self.cache),
                use_cache=True,
            )
            return self.last, out.logits
        logits = forward(self.model, torch.cat([b.prefix, b.suffix], dim=1), mask).logits
        before = (
            logits[:, self.cut - 1 : self.cut] if self.cut > 0 else logits[:, :1] * float("nan")
        )
        return before, logits[:, self.cut :]


def _letter_rows(
    out: Tensor, batch: _Batch, items: Sequence[ABItem], ids: dict[str, int]
) -> list[dict[str, float]]:
    """Letter probabilities after the last real suffix token (the "(")."""
    last = batch.suffix_mask.sum(1) - 1
    rows = []
    for i, it in enumerate(items):
        p = torch.softmax(out[i, int(last[i])].float(), -1)
        pm, po = float(p[ids[it.matching]]), float(p[ids[it.not_matching]])
        rows.append({"p_match": pm, "p_other": po, "score": pm / (pm + po) if pm + po > 0 else 0.5})
    return rows


def _response_logprob(before: Tensor, out: Tensor, batch: _Batch) -> Tensor:
    """Summed log-probability of each row's response tokens (B,)."""
    pred = torch.log_softmax(torch.cat([before, out[:, :-1]], dim=1).float(), -1)
    tok = pred.gather(-1, batch.suffix[..., None]).squeeze(-1)
    return torch.where(batch.response, tok, torch.zeros_like(tok)).sum(1)


class Scorer:
    """Scores a list of A/B items under any steering; inputs and prefix caches are built once.

    ``Scorer(lm, items, kind, positions=window)(steering)`` returns one row per item with
    ``score`` (plus ``p_match``/``p_other`` for letters, ``logp_match``/``logp_other`` for
    answers). ``steering`` is a :class:`Steering` (attached for the call unless the caller has
    attached it already) or None.
    """

    def __init__(
        self,
        lm: Any,
        items: Sequence[ABItem],
        kind: ScoreKind = "letter",
        *,
        positions: str | Window = "all",
        chat: bool = True,
        batch_size: int = 16,
    ) -> None:
        if kind not in ("letter", "answer"):
            raise ActscopeError(f"unknown A/B score '{kind}'; use letter or answer")
        model = lm.model
        dev = model.get_input_embeddings().weight.device
        self.kind, self.window = kind, parse_positions(positions)
        self.ids = letter_ids(lm.tokenizer, ab_letters(items)) if kind == "letter" else {}
        self.chunks: list[tuple[list[ABItem], list[tuple[_Batch, _Runner]]]] = []
        for k in range(0, len(items), batch_size):
            chunk = list(items[k : k + batch_size])
            qs = [it.question for it in chunk]
            if kind == "letter":
                resp = [["("] * len(chunk)]
            else:
                cs = [choices(it) for it in chunk]
                resp = [
                    [c[it.matching] for c, it in zip(cs, chunk, strict=True)],
                    [c[it.not_matching] for c, it in zip(cs, chunk, strict=True)],
                ]
            parts = []
            for r in resp:
                b = _build(lm, qs, r, chat).to(dev)
                parts.append((b, _Runner(model, b, self.window)))
            self.chunks.append((chunk, parts))

    @property
    def n_batches(self) -> int:
        return len(self.chunks)

    def __call__(self, steering: Steering | None = None, progress: Progress = None) -> pd.DataFrame:
        rows: list[dict[str, float]] = []
        with torch.inference_mode():
            for chunk, parts in self.chunks:
                if steering is None or steering.active:  # attached by the caller: leave it on
                    rows += self._score(chunk, parts, steering)
                else:
                    with steering:
                        rows += self._score(chunk, parts, steering)
                if progress is not None:
                    progress(1)
        return pd.DataFrame(rows)

    def _score(
        self, chunk: list[ABItem], parts: list[tuple[_Batch, _Runner]], st: Steering | None
    ) -> list[dict[str, float]]:
        if self.kind == "letter":
            b, run = parts[0]
            return _letter_rows(run(st)[1], b, chunk, self.ids)
        (bm, rm), (bo, ro) = parts
        lm_ = _response_logprob(*rm(st), bm).cpu()
        lo = _response_logprob(*ro(st), bo).cpu()
        return [
            {
                "logp_match": float(a),
                "logp_other": float(c),
                "score": 1.0 / (1.0 + math.exp(float(c) - float(a))),
            }
            for a, c in zip(lm_, lo, strict=True)
        ]


def ab_scores(
    lm: Any,
    items: Sequence[ABItem],
    steering: Steering | None = None,
    *,
    kind: ScoreKind = "letter",
    chat: bool = True,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Per-item A/B scores under ``steering`` (or unsteered), one configuration."""
    win = steering.window if steering is not None else Window()
    return Scorer(lm, items, kind, positions=win, chat=chat, batch_size=batch_size)(steering)


def summary(df: pd.DataFrame) -> dict[str, float]:
    """Mean score, its standard error and (letters) the mean letter mass p(A) + p(B)."""
    n = len(df)
    out = {
        "score": float(df.score.mean()),
        "score_sem": float(df.score.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        "n_items": float(n),
    }
    if "p_match" in df:
        out["p_mass"] = float((df.p_match + df.p_other).mean())
    return out


def ab_sweep(
    lm: Any,
    vector: SteeringVector,
    items: Sequence[ABItem],
    layers: Sequence[int],
    multipliers: Sequence[float],
    *,
    kinds: Sequence[ScoreKind] = ("letter",),
    positions: str | Window = "all",
    chat: bool = True,
    batch_size: int = 16,
    progress: Progress = None,
) -> pd.DataFrame:
    """Mean A/B score per (score kind, layer, multiplier), steering one layer at a time.

    Multiplier 0 is the unsteered model (computed once per kind). ``progress(1)`` is called per
    batch and configuration.
    """
    win = parse_positions(positions)
    rows = []
    for kind in kinds:
        scorer = Scorer(lm, items, kind, positions=win, chat=chat, batch_size=batch_size)
        base = summary(scorer(None, progress))
        for x in layers:
            for m in multipliers:
                if m == 0:
                    got = base
                else:
                    st = Steering(lm, vector, layers=[x], coef=float(m), positions=win)
                    got = summary(scorer(st, progress))
                rows.append({"kind": kind, "layer": x, "multiplier": float(m), **got})
    return pd.DataFrame(rows)
