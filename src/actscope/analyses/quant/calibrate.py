"""Calibration: static per-tensor ranges, MSE-searched clip ratios, per-channel statistics.

One pass over the calibration batches collects, for every site group (see :mod:`.groups`):

* a signed bfloat16-pattern histogram (:class:`SignedHistogram`): exact min, max and
  percentiles of ``x`` and ``|x|`` for bfloat16 activations;
* for groups read by Linear layers: per input channel ``max|x|`` (SmoothQuant scales);
* the first ``mse_tokens`` rows, kept on the device for the MSE search.

Static per-tensor ranges: ``max`` -> ``[-max|x|, max|x|]`` (symmetric) or ``[min, max]``;
``pP`` -> the exact P-th percentile of ``|x|`` (or the (100-P)-th and P-th percentiles of
``x``); ``mse`` -> the ``max`` range times ``r``. The MSE search picks ``r`` from the grid
``2^(-k/2)`` (k = 0..20 for per-tensor ranges, 0..8 for dynamic ones), then tries the two
quarter-octave neighbours of the best; the objective is the summed squared output error of
the group's consumers, ``sum_c ||(X - Q_r(X)) W_c^T||^2`` (the squared activation error for
groups no Linear reads), over the kept rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from actscope.analyses.quant.groups import OutputProbe, SiteGroup
from actscope.interventions.quant.fake import BlockView, Range, quantize_range, quantize_view
from actscope.interventions.quant.histogram import SignedHistogram
from actscope.interventions.quant.spec import QuantSpec


@dataclass
class GroupStats:
    """What the calibration pass keeps for one site group."""

    hist: SignedHistogram
    chan_max: Tensor | None = None
    stash: list[tuple[Tensor, Tensor | None]] = field(default_factory=list)
    stashed_rows: int = 0


@dataclass
class Calibration:
    """Fitted calibration: ranges and ratios by ``(group name, spec name)``, channel maxima.

    ``act_scales`` (per input channel ``max|x|``) are keyed by Linear module name: every
    consumer of a group gets the group's maxima. ``abs_max`` is each group's ``max|x|``.
    """

    ranges: dict[tuple[str, str], Range]
    ratios: dict[tuple[str, str], float]
    act_scales: dict[str, Tensor]
    abs_max: dict[str, float]
    exact: bool


def _channel_max(x: Tensor, valid: Tensor | None, prev: Tensor | None) -> Tensor:
    """Per-channel ``max|x|`` over the valid rows of ``x`` (rows, channels), merged with
    ``prev``."""
    xf = x.float()
    if valid is not None:
        xf = torch.where(valid[:, None], xf, torch.zeros((), device=xf.device))
    amax = xf.abs().amax(dim=0)
    return amax if prev is None else torch.maximum(prev, amax)


class Calibrator:
    """``capture.run`` consumer for the calibration pass over the groups' representative sites."""

    def __init__(
        self, groups: list[SiteGroup], mse_tokens: int = 0, scales_only: Sequence[SiteGroup] = ()
    ) -> None:
        """``groups`` are calibrated fully; ``scales_only`` groups (those not in ``groups``)
        only get their consumers' SmoothQuant scales, which the perplexity sweep needs for
        every Linear even when the sensitivity analysis covers a subset of the sites."""
        self.groups = {g.name: g for g in groups}
        self.scales_only = {g.name: g for g in scales_only if g.name not in self.groups}
        self.mse_tokens = mse_tokens
        self.stats: dict[str, GroupStats] = {}
        self.scale_max: dict[str, Tensor] = {}

    @property
    def sites(self) -> list[str]:
        return list(self.groups) + list(self.scales_only)

    def __call__(self, name: str, value: Tensor, mask: Tensor | None) -> None:
        g = self.groups.get(name)
        d = value.shape[-1]
        x = value.reshape(-1, d)
        valid = None if mask is None else mask.reshape(-1)
        if g is None:  # a scales-only group, or a site another consumer asked for
            if name in self.scales_only:
                self.scale_max[name] = _channel_max(x, valid, self.scale_max.get(name))
            return
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = GroupStats(SignedHistogram(x.device))
        st.hist.add(x, valid)
        if g.consumers:
            st.chan_max = _channel_max(x, valid, st.chan_max)
        need = self.mse_tokens - st.stashed_rows
        if need > 0:
            xs = x[:need].detach().clone()
            st.stash.append((xs, None if valid is None else valid[:need].clone()))
            st.stashed_rows += xs.shape[0]

    # fitting ---------------------------------------------------------------------------------
    def fit(self, specs: list[QuantSpec]) -> Calibration:
        """Static ranges for the per-tensor specs, MSE ratios for the ``mse`` specs."""
        ranges: dict[tuple[str, str], Range] = {}
        ratios: dict[tuple[str, str], float] = {}
        act_scales: dict[str, Tensor] = {}
        abs_max: dict[str, float] = {}
        exact = True
        for name, g in self.groups.items():
            st = self.stats[name]
            exact = exact and st.hist.exact
            abs_max[name] = st.hist.abs_max()
            for spec in specs:
                if spec.clip == "mse":
                    base = _hist_range(st.hist, spec) if spec.granularity == "tensor" else None
                    r = self._search(g, st, spec, base)
                    ratios[(name, spec.name)] = r
                    if base is not None:
                        ranges[(name, spec.name)] = Range(base.lo * r, base.hi * r)
                elif spec.granularity == "tensor":
                    ranges[(name, spec.name)] = _hist_range(st.hist, spec)
            if st.chan_max is not None:
                for c in g.consumers:
                    act_scales[c.module] = st.chan_max.float().cpu()
            st.stash.clear()
        for name, amax in self.scale_max.items():
            for c in self.scales_only[name].consumers:
                act_scales[c.module] = amax.float().cpu()
        return Calibration(ranges, ratios, act_scales, abs_max, exact)

    def _search(self, g: SiteGroup, st: GroupStats, spec: QuantSpec, base: Range | None) -> float:
        if not st.stash:
            return 1.0
        probe = OutputProbe(g.consumers)
        views = [(BlockView(x, spec.granularity, spec.group_size, v), x) for x, v in st.stash]

        def objective(r: float) -> float:
            total = torch.zeros((), dtype=torch.float64, device=views[0][1].device)
            for view, _ in views:
                if base is not None:
                    q, _ = quantize_range(view.x, base.lo * r, base.hi * r, spec)
                else:
                    q, _ = quantize_view(view, spec, None, r)
                e = q.sub_(view.x)
                err = probe.sq_norms(e).sum() if probe.n else e.square().sum()
                total += err.double()
            return float(total)

        steps = 21 if base is not None else 9
        cands = {2.0 ** (-k / 2): 0.0 for k in range(steps)}
        for r in cands:
            cands[r] = objective(r)
        best = min(cands, key=lambda r: (cands[r], -r))
        for r in (best * 2.0**0.25, best * 2.0**-0.25):
            if r <= 1.0 and r not in cands:
                cands[r] = objective(r)
        return min(cands, key=lambda r: (cands[r], -r))


def _hist_range(hist: SignedHistogram, spec: QuantSpec) -> Range:
    """Static range of ``spec`` (``mse``: the ``max`` range) from a calibration histogram."""
    p = spec.percentile
    if spec.symmetric:
        c = hist.abs_max() if p >= 1.0 else float(hist.abs_quantiles([p])[0])
        return Range.symmetric(c)
    if p >= 1.0:
        lo, hi = hist.min_max()
    else:
        lo, hi = (float(v) for v in hist.quantiles([1.0 - p, p]))
    return Range(min(lo, 0.0), max(hi, 0.0))
