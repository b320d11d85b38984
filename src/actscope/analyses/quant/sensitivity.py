"""Per-site quantization sensitivity, measured in the forward pass of the unmodified model.

For every site group and every quantizer ``Q`` (one pass over the evaluation batches, each
site quantized in isolation, on the device, accumulated in float64 device tensors):

* relative MSE ``||X - Q(X)||^2 / ||X||^2`` and SQNR ``10 log10(||X||^2 / ||X - Q(X)||^2)`` dB,
  the sums running over every real token of the evaluation batches;
* clip rate: clipped entries / real entries (an entry is clipped when the clamp changes its
  code, see :mod:`actscope.interventions.quant.fake`);
* output error of the consuming Linear ``||X W^T - Q(X) W^T||_F / ||X W^T||_F`` (weights as
  loaded, bias left out since it cancels), over the first ``out_tokens`` real tokens (whole
  batches); NaN for sites no Linear reads (residual stream).

Per site it also records ``max|x|``, the RMS ``sqrt(mean x^2)``, the crest factor
``max|x| / RMS`` and the per-token excess kurtosis averaged over tokens
(:func:`actscope.stats.moments.token_kurtosis`, the OSP definition), all on the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from actscope.analyses.quant.calibrate import Calibration
from actscope.analyses.quant.groups import OutputProbe, SiteGroup
from actscope.interventions.quant.fake import BlockView, quantize_view
from actscope.interventions.quant.spec import QuantSpec
from actscope.stats.moments import token_kurtosis


@dataclass
class _Acc:
    sse: Tensor
    clipped: Tensor
    out_err: Tensor
    ref: Tensor
    ssx: Tensor
    n_tokens: Tensor
    max_abs: Tensor
    kurt_sum: Tensor
    kurt_n: Tensor
    width: int


class SensitivityMeter:
    """``capture.run`` consumer measuring every quantizer at every group (see module doc)."""

    def __init__(
        self,
        groups: list[SiteGroup],
        specs: list[QuantSpec],
        calib: Calibration | None = None,
        out_tokens: int | None = None,
    ) -> None:
        self.groups = {g.name: g for g in groups}
        self.specs = specs
        self.calib = calib
        self.out_tokens = out_tokens
        self.out_done = 0
        self._do_out = True
        self.probes = {g.name: OutputProbe(g.consumers) for g in groups}
        self.acc: dict[str, _Acc] = {}

    @property
    def sites(self) -> list[str]:
        return list(self.groups)

    def begin_batch(self, batch: Any) -> None:
        self._do_out = self.out_tokens is None or self.out_done < self.out_tokens

    def end_batch(self, batch: Any) -> None:
        if self._do_out:
            self.out_done += int(batch.attention_mask.sum())

    def _new_acc(self, name: str, device: torch.device, width: int) -> _Acc:
        s, c = len(self.specs), self.probes[name].n

        def z(*shape: int, dtype: torch.dtype = torch.float64) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        return _Acc(
            sse=z(s),
            clipped=z(s, dtype=torch.long),
            out_err=z(s, c),
            ref=z(c),
            ssx=z(),
            n_tokens=z(dtype=torch.long),
            max_abs=z(dtype=torch.float32),
            kurt_sum=z(),
            kurt_n=z(dtype=torch.long),
            width=width,
        )

    def __call__(self, name: str, value: Tensor, mask: Tensor | None) -> None:
        if name not in self.groups:
            return
        d = value.shape[-1]
        x = value.reshape(-1, d)
        valid = None if mask is None else mask.reshape(-1)
        acc = self.acc.get(name)
        if acc is None:
            acc = self.acc[name] = self._new_acc(name, x.device, d)
        probe = self.probes[name]
        views: dict[tuple[str, int], BlockView] = {}
        first = views[("token", 0)] = BlockView(x, "token", valid=valid)
        xz = first.x
        sq = xz.square()
        acc.ssx += sq.sum(dtype=torch.float64)
        acc.n_tokens += x.shape[0] if valid is None else valid.sum()
        acc.max_abs.copy_(torch.maximum(acc.max_abs, xz.abs().amax()))
        n_row = torch.full((x.shape[0],), d, device=x.device)
        k, ok = token_kurtosis(n_row, xz.sum(-1), sq.sum(-1), sq.square().sum(-1))
        if valid is not None:
            ok = ok & valid
        acc.kurt_sum += (k * ok).sum()
        acc.kurt_n += ok.sum()
        do_out = self._do_out and probe.n > 0
        if do_out:
            acc.ref += probe.sq_norms(xz).double()
        sse, clipped, out = [], [], []
        for spec in self.specs:
            key = (spec.granularity, spec.group_size if spec.granularity == "group" else 0)
            view = views.get(key)
            if view is None:
                view = views[key] = BlockView(x, spec.granularity, spec.group_size, valid)
            static = ratio = None
            if self.calib is not None:
                static = self.calib.ranges.get((name, spec.name))
                ratio = self.calib.ratios.get((name, spec.name))
            q, n_clip = quantize_view(view, spec, static, ratio if ratio is not None else 1.0)
            e = q.sub_(view.x)  # Q(x) - x: the sign does not change any squared norm
            sse.append(torch.linalg.vector_norm(e).double().square())
            clipped.append(n_clip)
            if do_out:
                out.append(probe.sq_norms(e))
        acc.sse += torch.stack(sse)
        acc.clipped += torch.stack(clipped)
        if do_out:
            acc.out_err += torch.stack(out).double()

    # results ---------------------------------------------------------------------------------
    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(sensitivity, site_stats)``: one row per (site, quantizer), one row per site."""
        rows: list[dict[str, Any]] = []
        stats: list[dict[str, Any]] = []
        for name, g in self.groups.items():
            if name not in self.acc:
                continue
            a = self.acc[name]
            ssx = float(a.ssx)
            n_tok = int(a.n_tokens)
            sse = a.sse.cpu().tolist()
            clipped = a.clipped.cpu().tolist()
            out_err = a.out_err.cpu().tolist()
            ref = a.ref.cpu().tolist()
            n_entries = n_tok * a.width
            max_abs = float(a.max_abs)
            rms = math.sqrt(ssx / n_entries) if n_entries else float("nan")
            kurt = float(a.kurt_sum) / int(a.kurt_n) if int(a.kurt_n) else float("nan")
            consumer_of = {c.site: i for i, c in enumerate(g.consumers)}
            calib_max = self.calib.abs_max.get(name) if self.calib else None
            for s in g.sites:
                stats.append(
                    {
                        "site": s.name,
                        "kind": s.kind,
                        "layer": s.layer,
                        "group": name,
                        "n_tokens": n_tok,
                        "max_abs": max_abs,
                        "rms": rms,
                        "crest": max_abs / rms if rms > 0 else float("nan"),
                        "kurtosis": kurt,
                        "calib_max_abs": calib_max,
                    }
                )
                ci = consumer_of.get(s.name)
                for i, spec in enumerate(self.specs):
                    rel = sse[i] / ssx if ssx > 0 else float("nan")
                    out = float("nan")
                    if ci is not None and self.out_done > 0 and ref[ci] > 0:
                        out = math.sqrt(out_err[i][ci] / ref[ci])
                    rows.append(
                        {
                            "site": s.name,
                            "kind": s.kind,
                            "layer": s.layer,
                            "group": name,
                            "quantizer": spec.name,
                            "format": spec.fmt,
                            "bits": spec.bits,
                            "symmetric": spec.symmetric,
                            "granularity": spec.granularity,
                            "clip": spec.clip,
                            "rel_mse": rel,
                            "sqnr_db": _db(ssx, sse[i]),
                            "clip_rate": clipped[i] / n_entries if n_entries else float("nan"),
                            "out_rel_err": out,
                            "consumer": g.consumers[ci].module if ci is not None else None,
                        }
                    )
        return pd.DataFrame(rows), pd.DataFrame(stats)


def _db(signal: float, noise: float) -> float:
    if noise <= 0:
        return float("inf")
    if signal <= 0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)
