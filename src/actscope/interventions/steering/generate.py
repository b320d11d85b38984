"""Steered generation through the model's own ``generate``.

Prompts are formatted (chat template when the model has one), left-padded, and generated in
batches with every given :class:`~.apply.Steering` attached. Before each batch the steering's
prompt is pinned to the batch's attention mask (positions relative to the prompt end then follow
from the shapes of the forward passes, the same with and without a KV cache, in any batch and
with any transformers version) and, when a latched condition sits after a steered site, the
conditions are decided by :meth:`~.apply.Steering.prepare` on the unsteered prompt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from actscope.errors import ActscopeError
from actscope.interventions.steering.apply import Steering, Window
from actscope.interventions.steering.datasets import chat_prompt, has_template
from actscope.interventions.steering.encoding import Encoded, Tokens, pad, pad_id_of


def encode_prompts(
    lm: Any, prompts: Sequence[str], *, chat: bool = True, side: str = "left"
) -> Encoded:
    """Format ``prompts`` as user messages (``chat``) or raw text and pad them on ``side``."""
    tok = lm.tokenizer
    rows = []
    for p in prompts:
        text, _ = chat_prompt(tok, p, chat)
        special = not (chat and has_template(tok))
        ids = tok(text, add_special_tokens=special)["input_ids"]
        rows.append(Tokens(tuple(ids), (True,) * len(ids)))
    return pad(rows, side, pad_id_of(tok))


def instruction_window(lm: Any, *, chat: bool = True, answer_prefix: str = "") -> Window:
    """Positions after the user message: the template's assistant header, ``answer_prefix``
    and everything generated (CAA steers "every position after the instruction").

    With ``k`` tokens after the user message in the formatted prompt, those tokens have
    ``r = -(k - 1) .. 0``, so the window is ``Window(start=-(k - 1))``.
    """
    tok = lm.tokenizer
    probe = "Is this the message?"
    text, (_, end) = chat_prompt(tok, probe, chat)
    text += answer_prefix
    special = not (chat and has_template(tok))
    offsets = tok(text, add_special_tokens=special, return_offsets_mapping=True)["offset_mapping"]
    after = sum(1 for a, b in offsets if a >= end and b > a)
    return Window(start=-(max(after, 1) - 1))


def generate(
    lm: Any,
    prompts: Sequence[str],
    steering: Steering | Sequence[Steering] | None = None,
    *,
    chat: bool = True,
    max_new_tokens: int = 48,
    min_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    use_cache: bool = True,
    return_decisions: bool = False,
    progress: Callable[[int], None] | None = None,
    **generate_kwargs: Any,
) -> list[str] | tuple[list[str], list[bool | None]]:
    """Generate a continuation of every prompt; returns the new text of each (specials dropped).

    With ``return_decisions`` also returns, per prompt, whether the steering's condition rule
    fired (None without a condition; for several steerings, whether any fired).
    """
    model = lm.model
    device = model.get_input_embeddings().weight.device
    steers = (
        [] if steering is None else [steering] if isinstance(steering, Steering) else list(steering)
    )
    if any(_per_sample(s) for s in steers):
        batch_size = max(batch_size, len(prompts))
    texts: list[str] = []
    fired: list[bool | None] = []
    kw: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "use_cache": use_cache,
        "pad_token_id": pad_id_of(lm.tokenizer),
    }
    if min_new_tokens is not None:
        kw["min_new_tokens"] = min_new_tokens
    if do_sample:
        kw.update(temperature=temperature, top_p=top_p)
    kw.update(generate_kwargs)
    for k in range(0, len(prompts), batch_size):
        chunk = list(prompts[k : k + batch_size])
        enc = encode_prompts(lm, chunk, chat=chat).to(device)
        with contextlib.ExitStack() as stack:
            for s in steers:
                if not s.active:
                    stack.enter_context(s)
                s.reset()
                s.set_prompt(enc.attention_mask)
                if s.needs_prepare:
                    s.prepare(enc.input_ids, enc.attention_mask)
            torch.manual_seed(seed + k)
            with torch.inference_mode():
                out = model.generate(
                    input_ids=enc.input_ids, attention_mask=enc.attention_mask, **kw
                )
            fired += _decisions(steers, len(chunk))
            for s in steers:
                s.reset()
        new = out[:, enc.input_ids.shape[1] :]
        texts += lm.tokenizer.batch_decode(new, skip_special_tokens=True)
        if progress is not None:
            progress(len(chunk))
    return (texts, fired) if return_decisions else texts


def _per_sample(s: Steering) -> bool:
    return any(v.dim() == 2 for v in s.vectors.values()) or any(
        c.dim() == 1 for c in s.coefs.values()
    )


def _decisions(steers: Sequence[Steering], n: int) -> list[bool | None]:
    gates = [s.decisions() for s in steers if s.condition is not None]
    if not gates:
        return [None] * n
    any_fired = torch.zeros(n, dtype=torch.bool)
    for g in gates:
        if g is None or g.shape[0] != n:
            raise ActscopeError("condition decisions do not match the batch")
        any_fired |= g.cpu()
    return [bool(x) for x in any_fired]
