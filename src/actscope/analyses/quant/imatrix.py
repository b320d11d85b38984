"""Collect a llama.cpp importance matrix: per Linear input column, sum x^2, sum x, tokens.

Dense Linear layers (every ``<lin>_in`` site; the LM head with ``include_head``) get one
matrix each; the stacked MoE expert weights get one matrix per expert, summed over the tokens
routed to that expert (``expert_in`` feeds the gate and up experts, ``expert_act`` the down
experts). Sums run over real tokens in float64 on the device; the GGUF names come from
:func:`actscope.exports.gguf_tensor_name`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from actscope.analyses.quant.groups import SiteGroup
from actscope.capture.trace import sitemap_of
from actscope.data import Corpus
from actscope.exports.imatrix import (
    ImatrixEntry,
    gguf_arch_name,
    gguf_tensor_name,
    write_imatrix,
)

_EXPERT_MODULES = {"expert_in": ("gate_proj", "up_proj"), "expert_act": ("down_proj",)}


class ImatrixCollector:
    """``capture.run`` consumer summing squares of Linear inputs (see module docstring).

    ``groups`` are site groups (:func:`.groups.site_groups`); every consumer of a group gets
    the group's sums. Expert sites of MoE families are added automatically.
    """

    def __init__(self, lm: Any, groups: list[SiteGroup], include_head: bool = False) -> None:
        sm = sitemap_of(lm)
        self.family = str(sm.config.model_type)
        self.n_layers = sm.n_layers
        self.targets: dict[str, list[str]] = {}
        for g in groups:
            mods = [c.module for c in g.consumers if include_head or c.module != sm.lm_head]
            if mods:
                self.targets[g.name] = mods
        self.experts: dict[str, tuple[list[str], int, int]] = {}
        for s in sm.resolve("all"):
            if s.kind in _EXPERT_MODULES and s.expert is not None:
                block = s.module
                mods = [f"{block}.{m}" for m in _EXPERT_MODULES[s.kind]]
                self.experts[s.name] = (mods, int(s.expert), sm.n_experts)
        self.sums: dict[str, list[Tensor]] = {}
        self.tokens = 0

    @property
    def sites(self) -> list[str]:
        return [*self.targets, *self.experts]

    def end_batch(self, batch: Any) -> None:
        self.tokens += int(batch.attention_mask.sum())

    def __call__(self, name: str, value: Tensor, mask: Tensor | None) -> None:
        if name not in self.targets and name not in self.experts:
            return
        d = value.shape[-1]
        x = value.reshape(-1, d).float()
        if mask is not None:
            m = mask.reshape(-1)
            x = torch.where(m[:, None], x, torch.zeros((), device=x.device))
            n = m.sum()
        else:
            n = torch.tensor(x.shape[0], device=x.device)
        sq = x.square().sum(0, dtype=torch.float64)
        sx = x.sum(0, dtype=torch.float64)
        if name in self.targets:
            key, rows, row = name, 1, 0
        else:
            key, row, rows = name.rsplit(".", 1)[0], self.experts[name][1], self.experts[name][2]
        acc = self.sums.get(key)
        if acc is None:
            z = torch.zeros(rows, d, dtype=torch.float64, device=x.device)
            acc = self.sums[key] = [
                z,
                z.clone(),
                torch.zeros(rows, dtype=torch.float64, device=x.device),
            ]
            if name in self.experts:
                self.targets.setdefault(key, self.experts[name][0])
        acc[0][row] += sq
        acc[1][row] += sx
        acc[2][row] += n

    def entries(self) -> dict[str, ImatrixEntry]:
        """``{GGUF tensor name: ImatrixEntry}`` for every collected matrix."""
        out: dict[str, ImatrixEntry] = {}
        for key, (sq, sx, n) in self.sums.items():
            for module in self.targets[key]:
                name = gguf_tensor_name(module, self.family, self.n_layers)
                out[name] = ImatrixEntry(
                    sum_sq=sq.cpu().numpy(), counts=n.cpu().numpy(), sum_x=sx.cpu().numpy()
                )
        return out

    def write(
        self, path: str | os.PathLike[str], *, datasets: list[str], chunk_size: int
    ) -> dict[str, ImatrixEntry]:
        """Write ``path`` (GGUF imatrix); ``chunk_count = ceil(tokens / chunk_size)``."""
        entries = self.entries()
        chunks = int(np.ceil(self.tokens / max(chunk_size, 1)))
        write_imatrix(
            path,
            entries,
            datasets=datasets,
            chunk_count=chunks,
            chunk_size=chunk_size,
            arch=gguf_arch_name(self.family),
        )
        return entries


def collect_imatrix(
    lm: Any,
    corpus: str | Corpus,
    out: str | os.PathLike[str],
    *,
    tokens: int = 65536,
    seq_len: int = 512,
    batch_size: int = 4,
    include_head: bool = False,
    seed: int = 0,
    progress: Any = None,
) -> dict[str, ImatrixEntry]:
    """Read ``tokens`` tokens of ``corpus`` through ``lm`` and write the imatrix ``out``.

    ``progress`` is an object with ``stage(name, total)`` / ``advance(n)`` (or None).
    """
    from actscope.analyses.quant.groups import expand_patterns, site_groups
    from actscope.capture.runner import run
    from actscope.data import default_pad_id, load_corpus, make_batches, tokenize_corpus

    corp = load_corpus(corpus) if isinstance(corpus, str) else corpus
    lm.check_seq_len(seq_len)
    tok = tokenize_corpus(corp, lm.tokenizer, seq_len=seq_len, max_tokens=tokens, seed=seed)
    batches = list(make_batches(tok, batch_size, "right", default_pad_id(lm.tokenizer)))
    pats = ["linear_in", "final_norm"] if include_head else ["linear_in"]
    collector = ImatrixCollector(lm, site_groups(lm, expand_patterns(lm, pats)), include_head)
    if progress is not None:
        progress.stage("imatrix", tok.n_tokens)
    run(lm, batches, collector.sites, [collector], progress=progress.advance if progress else None)
    return collector.write(out, datasets=[corp.name], chunk_size=seq_len)
