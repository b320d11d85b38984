"""Generate answers and summarise each by its hidden-state delta and its mean log-probability.

A response of n tokens r_1..r_n follows a prompt of P tokens; the hidden state at position p
predicts token p + 1, so the states that produce the response are at positions P-1 .. P+n-1
(the last one produces the end of the answer). For each layer l (``resid_post.l``):

    delta_l = h_l[P + n - 1] - h_l[P - 1]

the change of the residual stream from the state that began the answer to the state that
ended it. The model's own confidence is the mean token log-probability
``(1/n) sum_i log p(r_i | prompt, r_<i)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from actscope.analyses.explain.tokens import encode, pad, pad_id
from actscope.capture import Trace, forward, sitemap_of


@dataclass
class Answer:
    """One generated answer: its tokens, text, per-layer delta (layers, d) and mean log-prob."""

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    delta: np.ndarray | None = None
    mean_logprob: float = float("nan")


def _cut(tok: Any, ids: list[int], stop: str, end_ids: set[int]) -> list[int]:
    """Generated ids up to (excluding) the first end token or token whose text holds ``stop``."""
    out: list[int] = []
    for i in ids:
        if i in end_ids or stop in tok.decode([i]):
            break
        out.append(i)
    return out


def generate_answers(
    lm: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 12,
    batch_size: int = 32,
    stop: str = "\n",
) -> list[Answer]:
    """Greedy answers (left-padded batches, KV cache), cut at the first ``stop`` or EOS."""
    tok = lm.tokenizer
    pid = pad_id(tok)
    end_ids = {i for i in (getattr(tok, "eos_token_id", None), pid) if isinstance(i, int)}
    out: list[Answer] = []
    for start in range(0, len(prompts), batch_size):
        seqs = [encode(tok, p) for p in prompts[start : start + batch_size]]
        ids, mask = pad(seqs, pid, side="left", device=lm.device)
        with torch.inference_mode():
            gen = lm.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pid,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        for s, row in zip(seqs, gen[:, ids.shape[1] :].tolist(), strict=True):
            resp = _cut(tok, row, stop, end_ids)
            out.append(Answer(s, resp, tok.decode(resp)))
    return out


def summarise_answers(lm: Any, answers: Sequence[Answer], batch_size: int = 16) -> None:
    """Fill ``delta`` (float32, layers x d) and ``mean_logprob`` of answers with >= 1 token."""
    sm = sitemap_of(lm)
    sites = [f"resid_post.{i}" for i in range(sm.n_layers)]
    todo = [a for a in answers if a.response_ids]
    pid = pad_id(lm.tokenizer)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        ids, mask = pad([a.prompt_ids + a.response_ids for a in chunk], pid, device=lm.device)
        with torch.inference_mode(), Trace(lm, sites, retain=True) as tr:
            tr.set_mask(mask)
            logits = forward(lm.model, ids, mask).logits
            for j, a in enumerate(chunk):
                p, n = len(a.prompt_ids), len(a.response_ids)
                hs = torch.stack([tr[s][j] for s in sites]).float()
                a.delta = (hs[:, p + n - 1] - hs[:, p - 1]).cpu().numpy()
                logp = torch.log_softmax(logits[j, p - 1 : p + n - 1].float(), dim=-1)
                tgt = torch.tensor(a.response_ids, device=logp.device)
                a.mean_logprob = float(logp.gather(1, tgt[:, None]).mean())
