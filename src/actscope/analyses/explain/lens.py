"""Logit lens and tuned lens: what each layer's residual stream already predicts.

Depth k = 0 is the embedding (``embed``), depth k = l + 1 the residual after layer l
(``resid_post.l``). With the model's final norm N, unembedding W_U and soft-cap c (if any):

* logit lens: ``logits_k = W_U N(h_k)`` (then ``c tanh(logits / c)``); at the last depth it
  equals the model's own logits.
* tuned lens: ``logits_k = W_U (A_k x_k + b_k)`` with ``x_k = h_k / rms(h_k)`` and one affine
  map (A_k, b_k) per depth fitted on a corpus by ridge least squares to the final norm's
  output ``u = N(h_L)``: ``min sum_t ||A_k x_kt + b_k - u_t||^2 + lam ||A_k||^2``. The fit is
  closed-form and streams (it accumulates X^T X and X^T U), so it needs one forward pass per
  corpus batch and no backward pass.

Per prompt and depth the lens reports the target token's probability, its rank (0 = top-1),
the top token, and ``KL(p_final || p_lens)`` in nats.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from actscope.analyses.explain.tokens import encode, last_index, pad, pad_id, target_id
from actscope.capture import Trace, forward, run, sitemap_of
from actscope.errors import DataError
from actscope.models.tokens import token_texts
from actscope.sites.sitemap import SiteMap
from actscope.utils.atomic import atomic_write_bytes


def depth_sites(sm: SiteMap) -> list[str]:
    """Sites read by the lens, by depth: ``embed`` then ``resid_post.0 .. L-1``."""
    return ["embed"] + [f"resid_post.{i}" for i in range(sm.n_layers)]


def unembed(sm: SiteMap, normed: Tensor) -> Tensor:
    """``W_U normed`` with the family's logits scale and final soft-cap, in fp32."""
    head = sm.model.get_output_embeddings()
    return sm.finish_logits(head(normed.to(head.weight.dtype)).float())


def logit_lens(sm: SiteMap, resid: Tensor) -> Tensor:
    """``W_U N(resid)``: the final norm and unembedding applied to a residual (..., d)."""
    norm = sm.module(sm.get("final_norm"))
    return unembed(sm, norm(resid))


def rms_normalise(h: Tensor, eps: float = 1e-6) -> Tensor:
    """``h / sqrt(mean(h^2) + eps)`` over the last dimension, in fp32."""
    h = h.float()
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


@dataclass
class TunedLens:
    """One affine map per depth: ``u_k = x_k @ weight[k] + bias[k]`` on rms-normalised input."""

    weight: Tensor  # (depths, d, d)
    bias: Tensor  # (depths, d)
    sites: list[str]

    def logits(self, sm: SiteMap, depth: int, resid: Tensor) -> Tensor:
        """Tuned-lens logits of depth ``depth`` for residuals (..., d)."""
        w, b = self.weight[depth].to(resid.device), self.bias[depth].to(resid.device)
        return unembed(sm, rms_normalise(resid) @ w + b)

    def save(self, path: str | Path) -> Path:
        """Write the maps as safetensors (atomically), with the site names as metadata."""
        from safetensors.torch import save

        data = save(
            {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()},
            metadata={"sites": ",".join(self.sites)},
        )
        return atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | Path) -> TunedLens:
        """Read a file written by :meth:`save`; anything else raises :class:`DataError`."""
        from safetensors import SafetensorError, safe_open

        p = Path(path)
        if not p.is_file():
            raise DataError(f"tuned lens file {p} does not exist")
        try:
            with safe_open(str(p), "pt") as fh:
                meta = fh.metadata() or {}
                keys = set(fh.keys())
                if not {"weight", "bias"} <= keys or "sites" not in meta:
                    raise DataError(
                        f"{p} is not a tuned lens file (needs tensors weight and bias and "
                        f"'sites' metadata; has tensors {', '.join(sorted(keys)) or 'none'})"
                    )
                lens = cls(fh.get_tensor("weight"), fh.get_tensor("bias"), meta["sites"].split(","))
        except (SafetensorError, OSError) as exc:
            raise DataError(f"cannot read tuned lens file {p}: {exc}") from exc
        depths = len(lens.sites)
        w, b = lens.weight, lens.bias
        if w.ndim != 3 or w.shape[0] != depths or w.shape[1] != w.shape[2] or b.shape != (
            depths,
            w.shape[-1],
        ):
            raise DataError(
                f"malformed tuned lens file {p}: weight {tuple(w.shape)}, bias {tuple(b.shape)} "
                f"for {depths} sites"
            )
        return lens

    def check_fits(self, sm: SiteMap) -> None:
        """Refuse a lens fitted on a model with other depth sites or another width."""
        sites, width = depth_sites(sm), int(sm.config.hidden_size)
        if self.sites != sites or self.weight.shape[-1] != width:
            raise DataError(
                f"the tuned lens was fitted on another model ({len(self.sites)} depths of width "
                f"{self.weight.shape[-1]}; this model has {len(sites)} of width {width})"
            )


class TunedLensFit:
    """Streaming ridge regression of ``u`` on ``[x, 1]`` per depth (float64 sums; mergeable)."""

    def __init__(self, sites: Sequence[str], width: int, skip_first: int = 1) -> None:
        self.sites = list(sites)
        self.skip_first = skip_first
        n = width + 1
        self.xtx = torch.zeros(len(sites), n, n, dtype=torch.float64)
        self.xtu = torch.zeros(len(sites), n, width, dtype=torch.float64)
        self.tokens = 0
        self._batch: dict[str, Tensor] = {}

    def __call__(self, site: str, value: Tensor, mask: Tensor | None) -> None:
        """Consumer for :func:`actscope.capture.run`: sites of the batch, then ``final_norm``."""
        if site != "final_norm":
            self._batch[site] = value
            return
        keep = torch.ones(value.shape[:2], dtype=torch.bool, device=value.device)
        if mask is not None:
            keep = mask.bool()
        pos = keep.long().cumsum(-1) - 1
        keep = keep & (pos >= self.skip_first)
        u = value[keep].double().cpu()
        for k, s in enumerate(self.sites):
            x = rms_normalise(self._batch.pop(s)[keep]).double().cpu()
            xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
            self.xtx[k] += xa.T @ xa
            self.xtu[k] += xa.T @ u
        self.tokens += int(keep.sum())

    def merge(self, other: TunedLensFit) -> TunedLensFit:
        self.xtx += other.xtx
        self.xtu += other.xtu
        self.tokens += other.tokens
        return self

    def result(self, ridge: float = 1e-3) -> TunedLens:
        """Solve ``(X^T X + lam I') W = X^T U`` per depth; lam = ridge * mean diag, bias free."""
        if self.tokens == 0:
            raise DataError("the tuned lens saw no tokens; give it a longer corpus")
        d = self.xtu.shape[2]
        ws, bs = [], []
        for k in range(len(self.sites)):
            a = self.xtx[k].clone()
            lam = ridge * float(torch.diagonal(a)[:d].mean())
            a[range(d), range(d)] += lam
            sol = torch.linalg.solve(a, self.xtu[k])
            ws.append(sol[:d].float())
            bs.append(sol[d].float())
        return TunedLens(torch.stack(ws), torch.stack(bs), self.sites)


def fit_tuned_lens(
    lm: Any, batches: Iterable[Any], ridge: float = 1e-3, skip_first: int = 1
) -> tuple[TunedLens, int]:
    """Fit a :class:`TunedLens` on corpus ``batches``; returns it and the tokens used.

    The first ``skip_first`` positions of every sequence are left out: they have no context
    and carry outsized norms.
    """
    sm = sitemap_of(lm)
    sites = depth_sites(sm)
    width = int(sm.config.hidden_size)
    fit = TunedLensFit(sites, width, skip_first)
    run(lm, batches, [*sites, "final_norm"], [fit], stop_early=False)
    return fit.result(ridge), fit.tokens


def _kl(final_logp: Tensor, logits: Tensor) -> Tensor:
    """KL(p_final || p) in nats, per row."""
    logp = torch.log_softmax(logits, dim=-1)
    return (final_logp.exp() * (final_logp - logp)).sum(-1)


def _lenses(tuned: TunedLens | None) -> list[str]:
    return ["logit"] + (["tuned"] if tuned is not None else [])


def _depth_logits(sm: SiteMap, tuned: TunedLens | None, lens: str, k: int, h: Tensor) -> Tensor:
    if lens == "logit":
        return logit_lens(sm, h)
    assert tuned is not None
    return tuned.logits(sm, k, h)


def lens_table(
    lm: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    tuned: TunedLens | None = None,
    batch_size: int = 16,
) -> pd.DataFrame:
    """One row per (prompt, lens, depth) at the prompt's last token.

    Columns: prompt, depth, site, lens, target, target_prob, target_rank, top_token,
    kl_final (KL(p_final || p_lens), nats). ``targets`` are continuations scored by their
    first token.
    """
    if len(prompts) != len(targets):
        raise DataError(f"{len(prompts)} prompts but {len(targets)} targets")
    if not prompts:
        raise DataError("no prompts given")
    sm = sitemap_of(lm)
    sites = depth_sites(sm)
    tok = lm.tokenizer
    rows: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(range(start, min(start + batch_size, len(prompts))))
        ids, mask = pad([encode(tok, prompts[i]) for i in chunk], pad_id(tok), device=lm.device)
        tgt = torch.tensor([target_id(tok, targets[i]) for i in chunk], device=lm.device)
        last = last_index(mask)
        rr = torch.arange(len(chunk), device=lm.device)
        with torch.inference_mode(), Trace(lm, sites, retain=True) as tr:
            tr.set_mask(mask)
            final = forward(lm.model, ids, mask).logits[rr, last].float()
            final_logp = torch.log_softmax(final, dim=-1)
            for lens in _lenses(tuned):
                for k, s in enumerate(sites):
                    logits = _depth_logits(sm, tuned, lens, k, tr[s][rr, last])
                    rows += _rows(tok, chunk, lens, k, s, logits, tgt, final_logp, targets)
    return pd.DataFrame(rows)


def _rows(
    tok: Any,
    chunk: list[int],
    lens: str,
    k: int,
    site: str,
    logits: Tensor,
    tgt: Tensor,
    final_logp: Tensor,
    targets: Sequence[str],
) -> list[dict[str, Any]]:
    probs = torch.softmax(logits, dim=-1)
    t_logit = logits.gather(1, tgt[:, None])
    rank = (logits > t_logit).sum(-1)
    p_t = probs.gather(1, tgt[:, None])[:, 0]
    top = token_texts(tok, logits.argmax(-1).tolist())
    kl = _kl(final_logp, logits)
    return [
        {
            "prompt": i,
            "lens": lens,
            "depth": k,
            "site": site,
            "target": targets[i],
            "target_prob": float(p_t[j]),
            "target_rank": int(rank[j]),
            "top_token": top[j],
            "kl_final": float(kl[j]),
        }
        for j, i in enumerate(chunk)
    ]


def lens_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Per (lens, depth): mean target probability, median rank, top-1 rate, mean KL (nats)."""
    g = table.groupby(["lens", "depth"], sort=True)
    out = g.agg(
        site=("site", "first"),
        mean_prob=("target_prob", "mean"),
        median_rank=("target_rank", "median"),
        top1=("target_rank", lambda r: float(np.mean(np.asarray(r) == 0))),
        mean_kl=("kl_final", "mean"),
    )
    return out.reset_index()


def corpus_kl(
    lm: Any, batches: Iterable[Any], tuned: TunedLens | None, max_tokens: int = 256
) -> pd.DataFrame:
    """Mean KL(p_final || p_lens) per (lens, depth) on corpus tokens (held-out from the fit).

    At most ``max_tokens`` real tokens are scored (positions >= 1 of each sequence), since
    every token costs one unembedding per depth and lens.
    """
    sm = sitemap_of(lm)
    sites = depth_sites(sm)
    sums: dict[tuple[str, int], float] = {}
    n = 0
    for batch in batches:
        if n >= max_tokens:
            break
        b = batch.to(lm.device) if hasattr(batch, "to") else batch
        with torch.inference_mode(), Trace(lm, sites, retain=True) as tr:
            tr.set_mask(b.attention_mask)
            logits = forward(lm.model, b.input_ids, b.attention_mask).logits.float()
            keep = b.attention_mask.bool() & (b.attention_mask.long().cumsum(-1) > 1)
            idx = keep.nonzero()[: max_tokens - n]
            final_logp = torch.log_softmax(logits[idx[:, 0], idx[:, 1]], dim=-1)
            for lens in _lenses(tuned):
                for k, s in enumerate(sites):
                    h = tr[s][idx[:, 0], idx[:, 1]]
                    kl = _kl(final_logp, _depth_logits(sm, tuned, lens, k, h))
                    sums[(lens, k)] = sums.get((lens, k), 0.0) + float(kl.sum())
        n += len(idx)
    if n == 0:
        raise DataError("no corpus tokens to evaluate the lens on")
    return pd.DataFrame(
        [
            {"lens": ls, "depth": k, "site": sites[k], "mean_kl": v / n, "tokens": n}
            for (ls, k), v in sums.items()
        ]
    )
