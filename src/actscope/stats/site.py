"""``SiteStats``: every per-site statistic of actscope in one streaming, mergeable reducer.

One ``update`` converts the batch to float32 once, zeroes padding rows (and non-finite
entries, see below), computes ``|x|`` and ``x^2`` once and derives every enabled group from
them. Notation: ``x`` the activations of the valid rows, ``a = |x|``, ``N`` the number of
counted entries (valid rows x channels, minus non-finite entries), ``D`` the channels.

Groups (``StatsOptions`` switches each on or off; all on by default):

- always: ``rows`` (valid tokens), ``entries`` (rows x D), ``count`` = N, ``nan``, ``posinf``,
  ``neginf``, ``nonfinite``. NaN/Inf entries are counted here and excluded from every other
  statistic (never an error).
- ``moments``: ``mean = sum(x)/N``, ``std = sqrt(sum(x^2)/N - mean^2)`` (population; float64
  sums of per-row float32 sums), ``mean_abs = sum(a)/N``, ``mean_sq = sum(x^2)/N``, signed
  ``min``/``max``, OSP per-token kurtosis ``kurtosis_token_mean`` = mean over tokens of
  ``max(0, mean_d(x^4)/var_d(x)^2 - 3)``, ``kurtosis_token_max`` and ``kurtosis_tokens`` (the
  tokens where it is defined; :mod:`actscope.stats.moments`).
- ``extremes``: top-K events of ``a`` with coordinates (:mod:`actscope.stats.topk`);
  ``max_abs`` and its coordinates (the first event), ``top1``/``top2``/``top3``.
- ``histogram``: exact counts of ``a`` in bit-pattern log bins (:mod:`.histogram`):
  ``quantiles`` (``torch.quantile`` convention; relative error <= 2^-8, exact for bfloat16
  input), ``median_abs`` (lower median), ``zeros``/``zero_frac`` (a == 0; for float32 input
  also the subnormals below 2^-133), ``near_zero``/``near_zero_frac`` (a < eps, zeros included;
  eps defaults to 2^-10 ~ 9.8e-4 and is truncated to a bin edge so the count is exact for every
  input dtype, the value used is reported as ``near_zero_eps``). Fractions are of ``count``.
- ``massive`` (Sun et al.): ``|a| > massive_abs`` (100) and ``|a| >= massive_ratio`` (1000)
  x median. Per-token median (exact, in ``update``): ``massive_token_count`` entries,
  ``massive_token_rows`` tokens holding one, ``massive_channels`` (channel -> entries, i.e.
  tokens). Layer-wide median (over all N entries, read from the histogram at the end):
  ``massive_layer_count``, exact for bfloat16 input, otherwise a lower bound with
  ``massive_layer_count_upper`` the upper bound (the histogram bin of the median and of each
  value are the only unknowns).
- ``channels``: per channel over tokens: ``channel_max_abs`` (SmoothQuant act scale),
  ``channel_mean_abs`` (AWQ), ``channel_sum_sq`` and ``channel_count`` (llama.cpp imatrix),
  ``channel_mean_sq``, ``channel_mean``.
- ``channel_kurtosis``: excess kurtosis ``n M4 / M2^2 - 3`` of each channel over tokens
  (central moments from float64 power sums, :mod:`actscope.stats.moments`), with its mean,
  max and argmax over the channels where it is defined.
- ``domains``: per ``domain_id`` (ids outside ``[0, max_domains)`` pooled as -1): ``rows``,
  ``count``, ``max_abs``, ``mean_abs``, ``kurtosis_token_mean``, ``massive_count``.

Non-finite values and host synchronisation. On CPU two decisions read tensor values, which
there costs nothing (no device to stall): the batch is checked with one reduction (a row sum
is finite iff the row has no NaN/Inf, barring a float32 overflow that only sends the batch down
the general path) and, when clean, skips the elementwise masks; per-token medians are computed
only for rows that can hold a massive entry (:mod:`actscope.stats.massive`). On CUDA (or with
``branch_free=True``) the general path always runs and no value is read back to the host
(``branch_free=False`` on CUDA would synchronise). Both paths give identical results.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from actscope.stats import fused
from actscope.stats.batch import Prepared, prepare
from actscope.stats.coords import Coords, StatsError, check_batch
from actscope.stats.histogram import AbsHistogram, snap_to_edge
from actscope.stats.massive import massive_per_token
from actscope.stats.moments import ChannelMoments, token_kurtosis
from actscope.stats.readout import (
    COUNT,
    ROW_COLUMNS,
    ROWS,
    channel_kurtosis_result,
    channels_result,
    domains_result,
    extremes_result,
    histogram_result,
    massive_result,
    moments_result,
)
from actscope.stats.scratch import buffer
from actscope.stats.topk import Events, TopK

__all__ = ["SiteStats", "StatsOptions"]


@dataclass(frozen=True)
class StatsOptions:
    """Which groups :class:`SiteStats` computes, and their parameters (see module doc)."""

    moments: bool = True
    extremes: bool = True
    histogram: bool = True
    massive: bool = True
    channels: bool = True
    channel_kurtosis: bool = True
    domains: bool = True
    top_k: int = 32
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999, 0.9999)
    near_zero_eps: float = 2.0**-10
    massive_abs: float = 100.0
    massive_ratio: float = 1000.0
    max_domains: int = 64
    branch_free: bool | None = None
    """``None``: branch-free on CUDA, value-checked fast path on CPU."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise StatsError(f"top_k must be >= 1, got {self.top_k}")
        if any(not 0.0 <= q <= 1.0 for q in self.quantiles):
            raise StatsError(f"quantiles must lie in [0, 1], got {self.quantiles}")
        snap_to_edge(self.near_zero_eps)
        if not (self.massive_abs >= 0 and self.massive_ratio > 0):
            raise StatsError("massive_abs must be >= 0 and massive_ratio > 0")
        if self.max_domains < 1:
            raise StatsError(f"max_domains must be >= 1, got {self.max_domains}")

    def same_statistics(self, other: StatsOptions) -> bool:
        """Equal in everything but ``branch_free`` (which changes speed, never results)."""
        return all(
            getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
            if f.name != "branch_free"
        )


class SiteStats:
    """Streaming statistics of one site; ``update`` / ``merge`` / ``result`` (see module doc)."""

    def __init__(self, options: StatsOptions | None = None, **overrides: Any) -> None:
        self.options = replace(options or StatsOptions(), **overrides)
        self.dim: int | None = None

    # ---- state --------------------------------------------------------------------------

    def _allocate(self, dim: int, device: torch.device) -> None:
        o = self.options
        if o.top_k * dim >= 1 << 31:
            raise StatsError(f"top_k * channels must be < 2^31, got {o.top_k} * {dim}")
        self.dim, self.device = dim, device
        f64 = {"dtype": torch.float64, "device": device}
        self.row_sums = torch.zeros(ROW_COLUMNS, **f64)
        self.nonfinite = torch.zeros(3, dtype=torch.long, device=device)
        # -min, max and the largest token kurtosis: all three combine with a maximum
        self.extrema = torch.full((3,), -math.inf, **f64)
        if o.extremes:
            self.topk = TopK(o.top_k, device)
            # a lower bound of the K-th kept |x| (-1 until K events are kept): a batch whose
            # values are all below it adds no event (fused CPU path)
            self.topk_floor = -1.0
        if o.histogram:
            self.hist = AbsHistogram(device)
        if o.massive:
            self.massive_channels = torch.zeros(dim, dtype=torch.long, device=device)
        if o.channels:
            self.ch_max = torch.zeros(dim, device=device)
            self.ch_sums = torch.zeros(3, dim, **f64)  # sum x, sum x^2, sum |x|
            self.ch_count = torch.zeros(dim, dtype=torch.long, device=device)
        if o.channel_kurtosis:
            self.ch_moments = ChannelMoments(dim, device)
        if o.domains:
            self.dom_sums = torch.zeros(o.max_domains + 1, ROW_COLUMNS, **f64)
            self.dom_max = torch.full((o.max_domains + 1,), -1.0, device=device)

    def to(self, device: torch.device | str) -> SiteStats:
        """Move the state to ``device`` (in place; returns ``self``)."""
        if self.dim is not None:
            self.device = torch.device(device)
            _move(self, self.device)
        return self

    # ---- update -------------------------------------------------------------------------

    def update(self, x: Tensor, valid: Tensor, coords: Coords) -> None:
        """Add one batch: ``x`` (R, D) any float dtype, ``valid`` (R,) bool, ``coords``."""
        check_batch(x, valid, coords, self.dim)
        if self.dim is None:
            self._allocate(x.shape[1], x.device)
        elif x.device != self.device:
            raise StatsError(f"activations on {x.device}, this reducer's state is on {self.device}")
        o = self.options
        if x.shape[0] == 0:
            return
        if x.device.type == "cpu" and o.branch_free is not True and fused.available():
            self._update_fused(x.detach(), valid, coords)
            return
        branch_free = o.branch_free if o.branch_free is not None else x.device.type != "cpu"
        b = prepare(x.detach(), valid, branch_free, need_sq=o.moments or o.channels)
        if b.nonfinite is not None:
            self.nonfinite += b.nonfinite
        # Order matters: x^2 lives in the buffer "work1", which x^4 (moments) and then the
        # centred values (channel_kurtosis) overwrite; "work2" is reused for the histogram.
        s2 = b.sq.sum(1) if b.sq is not None else None
        col_sum = b.xf.sum(0) if (o.channels or o.channel_kurtosis) else None
        if o.channels:
            self._update_channel_sums(b, col_sum)
        s4 = b.sq.square_().sum(1) if o.moments else None  # b.sq now holds x^4
        self._update_rows(b, coords, s2, s4)
        if o.channel_kurtosis:
            mask = b.w[:, None] if b.entry_ok is None else b.entry_ok.to(torch.float32)
            self.ch_moments.add_batch(b.xf, mask, b.n_col, col_sum)
        if o.histogram:
            work = buffer("work2", b.a.shape, torch.float32, b.a.device).view(torch.int32)
            excluded = b.a.numel() - b.n_row.sum()
            self.hist.add(b.a, excluded, exact=x.dtype == torch.bfloat16, work=work)
        if o.extremes:
            self.topk.add(Events.from_batch(b.a, b.row_max, b.row_ok, coords, o.top_k, b.entry_ok))

    def _update_fused(self, x: Tensor, valid: Tensor, coords: Coords) -> None:
        """CPU path: every per-batch reduction from one pass of :mod:`actscope.stats.fused`.

        Produces the same state as the torch path (to float rounding of the sums, which the
        kernel accumulates in float64); the tests compare both paths.
        """
        o = self.options
        ref = None
        if o.channel_kurtosis and self.ch_moments.sums.numpy()[0].min() > 0:
            ref = self.ch_moments.ref.numpy()  # power sums about it in the same pass
        p = fused.partials(
            x,
            valid,
            channels=o.channels or o.channel_kurtosis,
            channel_moments=o.channel_kurtosis,
            massive=o.massive,
            massive_abs=o.massive_abs,
            massive_ratio=o.massive_ratio,
            moment_ref=ref,
            hist_out=self.hist.counts.numpy() if o.histogram else None,
        )
        state = {"row_sums": self.row_sums, "extrema": self.extrema, "nonfinite": self.nonfinite}
        if o.domains:
            state |= {"dom_sums": self.dom_sums, "dom_max": self.dom_max}
        if o.channels:
            state |= {"ch_max": self.ch_max, "ch_sums": self.ch_sums, "ch_count": self.ch_count}
        if o.channel_kurtosis:
            state |= {"m_sums": self.ch_moments.sums, "m_ref": self.ch_moments.ref}
        if o.massive:
            state["massive"] = self.massive_channels
        if o.histogram:
            self.hist.exact = self.hist.exact and x.dtype == torch.bfloat16
        dom = coords.domain_slot(o.max_domains) if o.domains else None
        fused.fold(p, valid, dom, o.moments, state)
        if not o.extremes:
            return
        finite = not p.chunk_bad.any()
        if finite:
            if p.row_max.max() < self.topk_floor:
                return  # every |x| of the batch is below the K-th kept event
            # one numba pass over the candidate rows, same keys as the torch path
            rank = coords.row_rank().numpy()
            vals, rows, chans = fused.topk_events(p.bits, p.row_max, p.row_ok, rank, o.top_k)
            # events below the floor cannot be kept
            events = fused.event_fields(vals, rows, chans, coords, self.topk_floor)
            self.topk_floor = max(self.topk_floor, float(vals[-1]))
            if events[0].size:
                self.topk.add_host(events)
            return

        # NaN/Inf in the batch: the torch selection, which masks non-finite entries
        def rows_abs(idx: Tensor) -> Tensor:
            sub = x.index_select(0, idx).float().abs()
            return torch.where(torch.isfinite(sub), sub, 0.0)

        row_max, row_ok = torch.from_numpy(p.row_max), torch.from_numpy(p.row_ok)
        entry_ok = torch.isfinite(x) & valid[:, None]
        self.topk.add(
            Events.from_batch(rows_abs, row_max, row_ok, coords, o.top_k, entry_ok, x.shape[1])
        )

    def _update_rows(
        self, b: Prepared, coords: Coords, s2: Tensor | None, s4: Tensor | None
    ) -> None:
        """Per-row quantities summed per site and per domain, signed extrema, massive counts.

        ``s2``, ``s4``: per-row sums of x^2 and x^4 (``None`` when not computed).
        """
        o = self.options
        zero = torch.zeros(b.xf.shape[0], dtype=torch.float64, device=b.xf.device)
        k_t, k_ok = zero, torch.zeros_like(b.valid)
        if s4 is not None:
            k_t, k_ok = token_kurtosis(b.n_row, b.s1, s2, s4)
            k_ok = k_ok & b.row_ok
            signed = torch.where(b.row_ok, torch.stack([-b.rmin, b.rmax]), -math.inf).amax(1)
            kmax = torch.where(k_ok, k_t, -math.inf).amax()
            self.extrema = torch.maximum(self.extrema, torch.cat([signed.double(), kmax[None]]))
        m_row = torch.zeros_like(b.n_row)
        if o.massive:
            m_row, m_col = massive_per_token(
                b.a,
                b.row_max,
                b.row_ok,
                b.entry_ok,
                b.n_row,
                o.massive_abs,
                o.massive_ratio,
                b.branch_free,
            )
            self.massive_channels += m_col
        per_row = torch.stack(
            [
                b.valid,
                b.n_row,
                b.s1,
                zero if s2 is None else s2,
                b.a.sum(1),
                k_t,
                k_ok,
                m_row,
                m_row > 0,
            ],
            dim=1,
        ).to(torch.float64)
        self.row_sums += per_row.sum(0)
        if o.domains:
            dom = coords.domain_slot(o.max_domains)
            self.dom_sums.index_add_(0, dom, per_row)
            self.dom_max.scatter_reduce_(0, dom, torch.where(b.row_ok, b.row_max, -1.0), "amax")

    def _update_channel_sums(self, b: Prepared, col_sum: Tensor) -> None:
        """Per-channel max |x|, sums of x, x^2 and |x| over the batch's rows, and counts."""
        self.ch_max = torch.maximum(self.ch_max, b.a.amax(0))
        self.ch_sums += torch.stack([col_sum, b.sq.sum(0), b.a.sum(0)])
        self.ch_count += b.n_col

    # ---- merge --------------------------------------------------------------------------

    def merge(self, other: SiteStats) -> SiteStats:
        """Add the state of ``other`` (built on a disjoint part of the stream); returns self."""
        if not isinstance(other, SiteStats):
            raise StatsError(f"cannot merge SiteStats with {type(other).__name__}")
        if not self.options.same_statistics(other.options):
            raise StatsError("cannot merge SiteStats built with different options")
        if other.dim is None:
            return self
        if self.dim is None:
            state = copy.deepcopy(other).to(other.device)
            self.__dict__.update({k: v for k, v in vars(state).items() if k != "options"})
            return self
        if other.dim != self.dim:
            raise StatsError(f"cannot merge states of {self.dim} and {other.dim} channels")
        dev, o = self.device, self.options
        self.row_sums += other.row_sums.to(dev)
        self.nonfinite += other.nonfinite.to(dev)
        self.extrema = torch.maximum(self.extrema, other.extrema.to(dev))
        if o.extremes:
            self.topk.merge(other.topk)
            self.topk_floor = max(self.topk_floor, other.topk_floor)
        if o.histogram:
            self.hist.merge(other.hist)
        if o.massive:
            self.massive_channels += other.massive_channels.to(dev)
        if o.channels:
            self.ch_max = torch.maximum(self.ch_max, other.ch_max.to(dev))
            self.ch_sums += other.ch_sums.to(dev)
            self.ch_count += other.ch_count.to(dev)
        if o.channel_kurtosis:
            self.ch_moments.merge(other.ch_moments)
        if o.domains:
            self.dom_sums += other.dom_sums.to(dev)
            self.dom_max = torch.maximum(self.dom_max, other.dom_max.to(dev))
        return self

    # ---- results ------------------------------------------------------------------------

    def quantile(self, qs: float | list[float] | tuple[float, ...]) -> np.ndarray:
        """Quantiles of |a| at ``qs`` from the histogram (any levels, see :mod:`.histogram`)."""
        if not self.options.histogram:
            raise StatsError("quantiles need the histogram group (histogram=True)")
        levels = [qs] if isinstance(qs, float | int) else list(qs)
        if self.dim is None:
            return np.full(len(levels), np.nan)
        return AbsHistogram.quantiles(self.hist.numpy(), levels, self.hist.exact)

    def result(self) -> dict[str, Any]:
        """Final values: Python ints/floats, numpy arrays and small dicts (host copies)."""
        o = self.options
        if self.dim is None:
            zero = ("rows", "entries", "count", "nan", "posinf", "neginf", "nonfinite")
            return {"dim": None} | dict.fromkeys(zero, 0)
        rs = self.row_sums.cpu().numpy()
        nonfinite = [int(v) for v in self.nonfinite.cpu().numpy()]
        out: dict[str, Any] = {
            "dim": self.dim,
            "rows": int(rs[ROWS]),
            "entries": int(rs[ROWS]) * self.dim,
            "count": int(rs[COUNT]),
            "nan": nonfinite[0],
            "posinf": nonfinite[1],
            "neginf": nonfinite[2],
            "nonfinite": sum(nonfinite),
        }
        if o.moments:
            out.update(moments_result(rs, self.extrema.cpu().numpy()))
        if o.extremes:
            out.update(extremes_result(self.topk.events().to_numpy()))
        hist = self.hist.numpy() if o.histogram else None
        exact = o.histogram and self.hist.exact
        if hist is not None:
            out.update(histogram_result(hist, exact, o.quantiles, o.near_zero_eps))
        if o.massive:
            per_channel = self.massive_channels.cpu().numpy()
            out.update(massive_result(rs, per_channel, hist, exact, o.massive_abs, o.massive_ratio))
        if o.channels:
            host = [t.cpu().numpy() for t in (self.ch_sums, self.ch_count, self.ch_max)]
            out.update(channels_result(*host))
        if o.channel_kurtosis:
            out.update(channel_kurtosis_result(self.ch_moments.kurtosis()))
        if o.domains:
            sums, dmax = self.dom_sums.cpu().numpy(), self.dom_max.cpu().numpy()
            out["domains"] = domains_result(sums, dmax, o.max_domains, o.moments, o.massive)
        return out


def _move(holder: object, device: torch.device) -> None:
    """Move every tensor held by ``holder`` and by the state objects it holds, in place."""
    if isinstance(holder, TopK):
        holder.flush()  # queued host arrays become tensors of the current device first
    for name, value in vars(holder).items():
        if isinstance(value, Tensor):
            setattr(holder, name, value.to(device))
        elif isinstance(value, Events | TopK | AbsHistogram | ChannelMoments):
            _move(value, device)
        elif isinstance(value, list):
            for item in value:
                _move(item, device)
