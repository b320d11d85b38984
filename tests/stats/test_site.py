"""Tests of actscope.stats.site: every statistic vs a direct float64 computation, merging,
padding exclusion, NaN/Inf handling, both code paths, bfloat16 input and pickling."""

from __future__ import annotations

import math
import pickle
import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from actscope.errors import ActscopeError
from actscope.stats import Coords, SiteStats, StatsOptions
from actscope.stats.histogram import REL_ERROR, snap_to_edge

Batch = tuple[torch.Tensor, torch.Tensor, Coords]
OPTS = StatsOptions(top_k=10, max_domains=3)


def make_stream(n: int, dtype: torch.dtype, seed: int = 0, nonfinite: bool = True) -> list[Batch]:
    """Heavy-tailed batches of 4 samples x 12 tokens x 40 channels with planted features."""
    g = torch.Generator().manual_seed(seed)
    b_, t_, d_ = 4, 12, 40
    out = []
    for i in range(n):
        scale = torch.rand(d_, generator=g) * 2 + 0.2
        x = torch.randn(b_ * t_, d_, generator=g) * scale
        x += torch.randn(b_ * t_, d_, generator=g) ** 3 * 0.3 + 0.1
        x[::t_, 3] = 2560.0  # massive on the first token of every sample
        x[5, 11] = -700.0
        x[7, 20] = -2560.0  # ties the planted value
        x[9, :4] = 0.0
        x[10, 4:8] = 1e-4
        if nonfinite and i % 2 == 0:
            x[13, 2] = math.nan
            x[14, 6] = math.inf
            x[15, 8] = -math.inf
        valid = torch.ones(b_ * t_, dtype=torch.bool)
        valid[-3:] = False  # padding at the end of the last sample
        x[-3:] = torch.randn(3, d_, generator=g) * 1e6
        if nonfinite:
            x[-1, 0] = math.nan
        tokens = torch.randint(0, 500, (b_, t_), generator=g)
        domains = torch.tensor([0, 1, 2, 7])  # 7 is outside max_domains=3: pooled as -1
        coords = Coords.from_grid(tokens, torch.arange(b_) + b_ * i, domains)
        out.append((x.to(dtype), valid, coords))
    return out


def run(batches: list[Batch], opts: StatsOptions = OPTS) -> SiteStats:
    s = SiteStats(opts)
    for x, valid, coords in batches:
        s.update(x, valid, coords)
    return s


def reference(batches: list[Batch], opts: StatsOptions = OPTS) -> dict[str, Any]:
    """Every statistic computed directly in float64 from the valid, finite entries."""
    xs, oks, coords = [], [], {k: [] for k in ("sample_id", "position", "token_id", "domain_id")}
    for x, valid, c in batches:
        xd = x.double()[valid].numpy()
        xs.append(xd)
        oks.append(np.isfinite(xd))
        for k in coords:
            coords[k].append(getattr(c, k)[valid].numpy())
    x = np.concatenate(xs)
    ok = np.concatenate(oks)
    co = {k: np.concatenate(v) for k, v in coords.items()}
    vals = x[ok]
    a = np.abs(np.where(ok, x, 0.0))
    ref: dict[str, Any] = {
        "rows": x.shape[0],
        "entries": x.size,
        "count": int(ok.sum()),
        "nan": int(np.isnan(x).sum()),
        "posinf": int((x == np.inf).sum()),
        "neginf": int((x == -np.inf).sum()),
        "mean": vals.mean(),
        "std": vals.std(),
        "mean_abs": np.abs(vals).mean(),
        "mean_sq": (vals**2).mean(),
        "min": vals.min(),
        "max": vals.max(),
    }
    # OSP per-token kurtosis and Sun's criterion with the per-token (lower) median
    kurt, mass_row = [], np.zeros(x.shape[0], dtype=np.int64)
    mass_col = np.zeros(x.shape[1], dtype=np.int64)
    for r in range(x.shape[0]):
        v = x[r][ok[r]]
        var = (v * v).mean() - v.mean() ** 2
        kurt.append(max(0.0, (v**4).mean() / var**2 - 3) if var > 0 else np.nan)
        med = np.float32(np.sort(np.abs(v))[(v.size + 1) // 2 - 1])
        hit = ok[r] & (a[r] > opts.massive_abs) & (a[r] >= np.float32(opts.massive_ratio) * med)
        mass_row[r] = hit.sum()
        mass_col += hit
    kurt = np.array(kurt)
    ref["kurtosis_token_mean"] = np.nanmean(kurt)
    ref["kurtosis_token_max"] = np.nanmax(kurt)
    ref["kurtosis_tokens"] = int(np.isfinite(kurt).sum())
    ref["massive_token_count"] = int(mass_row.sum())
    ref["massive_token_rows"] = int((mass_row > 0).sum())
    ref["massive_channels"] = {int(c): int(mass_col[c]) for c in np.flatnonzero(mass_col)}
    # top-K events in the total order
    r_idx, c_idx = np.nonzero(ok)
    order = np.lexsort((c_idx, co["position"][r_idx], co["sample_id"][r_idx], -a[r_idx, c_idx]))
    top = order[: opts.top_k]
    ref["events"] = {
        "value": a[r_idx, c_idx][top],
        "sample_id": co["sample_id"][r_idx[top]],
        "position": co["position"][r_idx[top]],
        "token_id": co["token_id"][r_idx[top]],
        "channel": c_idx[top],
        "domain_id": co["domain_id"][r_idx[top]],
    }
    # histogram statistics
    absv = np.abs(vals)
    ref["quantiles"] = dict(
        zip(
            [f"p{100 * q:g}" for q in opts.quantiles],
            torch.quantile(
                torch.from_numpy(absv), torch.tensor(opts.quantiles, dtype=torch.float64)
            ).numpy(),
            strict=True,
        )
    )
    med = np.sort(absv)[(absv.size + 1) // 2 - 1]
    ref["median_abs"] = med
    ref["zeros"] = int((absv == 0).sum())
    ref["near_zero"] = int((absv < snap_to_edge(opts.near_zero_eps)).sum())
    ref["massive_layer_count"] = int(
        ((absv > opts.massive_abs) & (absv >= opts.massive_ratio * med)).sum()
    )
    # channels
    cnt = ok.sum(0)
    xz = np.where(ok, x, 0.0)
    ref["channel_count"] = cnt
    ref["channel_max_abs"] = a.max(0)
    ref["channel_mean"] = xz.sum(0) / cnt
    ref["channel_mean_sq"] = (xz**2).sum(0) / cnt
    ref["channel_sum_sq"] = (xz**2).sum(0)
    ref["channel_mean_abs"] = a.sum(0) / cnt
    cen = np.where(ok, x - ref["channel_mean"], 0.0)
    ref["channel_kurtosis"] = cnt * (cen**4).sum(0) / (cen**2).sum(0) ** 2 - 3
    # domains (ids >= max_domains pooled as -1)
    dom = np.where(co["domain_id"] < opts.max_domains, co["domain_id"], -1)
    ref["domains"] = {}
    for d in np.unique(dom):
        m = dom == d
        ref["domains"][int(d)] = {
            "rows": int(m.sum()),
            "count": int(ok[m].sum()),
            "max_abs": a[m].max(),
            "mean_abs": a[m].sum() / ok[m].sum(),
            "kurtosis_token_mean": np.nanmean(kurt[m]),
            "massive_count": int(mass_row[m].sum()),
        }
    return ref


def assert_same(got: Any, want: Any, rtol: float, atol: float = 0.0, path: str = "") -> None:
    """Recursive comparison: integers exactly, floats and float arrays to rtol/atol."""
    if isinstance(want, dict):
        assert set(got) == set(want), (path, set(got) ^ set(want))
        for k in want:
            assert_same(got[k], want[k], rtol, atol, f"{path}.{k}")
    elif isinstance(want, np.ndarray) and want.dtype.kind in "iub":
        np.testing.assert_array_equal(got, want, err_msg=path)
    elif isinstance(want, int | np.integer) and not isinstance(want, bool):
        assert got == want, (path, got, want)
    elif isinstance(want, str | type(None)):
        assert got == want, path
    else:
        np.testing.assert_allclose(
            np.asarray(got, dtype=np.float64),
            np.asarray(want, dtype=np.float64),
            rtol=rtol,
            atol=atol,
            err_msg=path,
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_every_statistic_matches_direct_computation(dtype: torch.dtype) -> None:
    batches = make_stream(3, dtype)
    res = run(batches).result()
    ref = reference(batches)
    exact = dtype == torch.bfloat16
    for key in (
        "rows",
        "entries",
        "count",
        "nan",
        "posinf",
        "neginf",
        "kurtosis_tokens",
        "massive_token_count",
        "massive_token_rows",
        "massive_channels",
        "zeros",
        "near_zero",
    ):
        assert_same(res[key], ref[key], 0, path=key)
    assert res["nonfinite"] == ref["nan"] + ref["posinf"] + ref["neginf"] > 0
    for key in ("mean", "std", "mean_abs", "mean_sq", "kurtosis_token_mean", "kurtosis_token_max"):
        assert_same(res[key], ref[key], 1e-5, path=key)
    assert res["min"] == ref["min"] and res["max"] == ref["max"]
    assert_same(res["events"], ref["events"], 0)
    assert res["max_abs"] == res["top1"] == ref["events"]["value"][0] == 2560.0
    assert (res["top2"], res["top3"]) == tuple(ref["events"]["value"][1:3])
    assert (res["max_abs_sample_id"], res["max_abs_position"], res["max_abs_channel"]) == (0, 0, 3)
    assert res["max_abs_token_id"] == ref["events"]["token_id"][0]
    # quantiles: exact for bfloat16, within the stated bound otherwise
    assert_same(res["quantiles"], ref["quantiles"], 1e-12 if exact else REL_ERROR)
    assert res["quantile_rel_error"] == (0.0 if exact else REL_ERROR)
    assert_same(res["median_abs"], ref["median_abs"], 1e-12 if exact else REL_ERROR)
    assert res["zero_frac"] == ref["zeros"] / ref["count"]
    if exact:
        assert (
            res["massive_layer_count"]
            == res["massive_layer_count_upper"]
            == ref["massive_layer_count"]
        )
    else:
        assert (
            res["massive_layer_count"]
            <= ref["massive_layer_count"]
            <= res["massive_layer_count_upper"]
        )
    assert ref["massive_token_count"] > 0 and ref["massive_layer_count"] > 0
    for key in (
        "channel_count",
        "channel_max_abs",
        "channel_mean",
        "channel_mean_sq",
        "channel_sum_sq",
        "channel_mean_abs",
        "channel_kurtosis",
    ):
        assert_same(res[key], ref[key], 1e-5, 1e-6, path=key)
    k = ref["channel_kurtosis"]
    assert_same(res["channel_kurtosis_mean"], k.mean(), 1e-5)
    assert_same(res["channel_kurtosis_max"], k.max(), 1e-5)
    assert res["channel_kurtosis_argmax"] == int(np.argmax(k))
    assert_same(res["domains"], ref["domains"], 1e-5)
    assert set(res["domains"]) == {0, 1, 2, -1}


def _split_results(
    batches: list[Batch], pieces: list[list[int]], order: list[int]
) -> dict[str, Any]:
    states = [run([batches[i] for i in piece]) for piece in pieces]
    states = [pickle.loads(pickle.dumps(s)) for s in states]  # as shipped between processes
    acc = SiteStats(OPTS)
    for i in order:
        acc.merge(states[i])
    return acc.result()


def _assert_merged(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Equal to float64 rounding, except the per-channel kurtosis: a batch that starts a piece
    takes its power sums about its own means, otherwise about the running reference, with
    float32 block sums (CPU kernel): the two differ by float32 rounding."""
    keys = ("channel_kurtosis", "channel_kurtosis_mean", "channel_kurtosis_max")
    got, want = dict(got), dict(want)
    assert_same({k: got.pop(k) for k in keys}, {k: want.pop(k) for k in keys}, 1e-5)
    assert_same(got, want, 1e-12, 1e-12)


def test_merge_equals_one_pass() -> None:
    batches = make_stream(6, torch.bfloat16, seed=3)
    whole = run(batches).result()
    halves = _split_results(batches, [[0, 1, 2], [3, 4, 5]], [0, 1])
    _assert_merged(halves, whole)
    many = _split_results(batches, [[4], [0, 2], [1], [5, 3]], [2, 0, 3, 1])
    _assert_merged(many, whole)
    # tree of merges, and merging into an empty reducer from either side
    a, b = run(batches[:3]), run(batches[3:])
    _assert_merged(SiteStats(OPTS).merge(a).merge(b).result(), whole)
    _assert_merged(b.merge(a).merge(SiteStats(OPTS)).result(), whole)


def test_rebatching_rows_changes_only_rounding() -> None:
    batches = make_stream(2, torch.float32, seed=4, nonfinite=False)
    whole = run(batches).result()
    rows = []
    for x, valid, c in batches:
        for lo in range(0, x.shape[0], 16):
            sl = slice(lo, lo + 16)
            rows.append(
                (
                    x[sl],
                    valid[sl],
                    Coords(c.sample_id[sl], c.position[sl], c.token_id[sl], c.domain_id[sl]),
                )
            )
    random.Random(0).shuffle(rows)
    again = run(rows).result()
    assert_same(again, whole, 1e-5, 1e-6)
    assert_same(again["events"], whole["events"], 0)


def test_padding_rows_change_nothing() -> None:
    batches = make_stream(3, torch.bfloat16, seed=5)
    base = run(batches).result()
    for fill in (0.0, 1e30, math.nan, -math.inf):
        changed = []
        for x, valid, c in batches:
            x = x.clone()
            x[~valid] = fill
            changed.append((x, valid, c))
        assert_same(run(changed).result(), base, 0)


def test_branch_free_path_gives_identical_results() -> None:
    """The torch path (branch-free, as on CUDA) and the fused CPU kernel agree: counts, extrema,
    events, histogram and massive counts exactly; float sums to float32 summation order."""
    for nonfinite in (False, True):
        batches = make_stream(3, torch.bfloat16, seed=6, nonfinite=nonfinite)
        fast = run(batches).result()
        general = run(batches, StatsOptions(top_k=10, max_domains=3, branch_free=True)).result()
        assert_same(general, fast, 1e-5, 1e-9)
        for key in (
            "min",
            "max",
            "max_abs",
            "top1",
            "top2",
            "top3",
            "median_abs",
            "count",
            "massive_token_count",
            "massive_layer_count",
            "zeros",
            "near_zero",
        ):
            assert general[key] == fast[key], key
        for f in ("value", "sample_id", "position", "channel"):
            np.testing.assert_array_equal(general["events"][f], fast["events"][f])
        np.testing.assert_array_equal(general["channel_max_abs"], fast["channel_max_abs"])


def test_batches_below_the_kept_events_skip_the_top_k(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fused path: once K events are kept, a batch whose every |x| is below the K-th kept value
    skips the top-K search; the events equal those of the torch path (ties included)."""
    from actscope.stats import fused

    calls = []
    real = fused.topk_events
    monkeypatch.setattr(fused, "topk_events", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(9)
    batches = []
    for i in range(8):  # large first batches, then small ones: only the first ones can enter
        x = torch.randn(48, 40, generator=g) * (100.0 if i < 2 else 1.0)
        x[5, 3] = 250.0 if i in (0, 6) else x[5, 3]  # a tie with the first batch, later
        tok = torch.randint(0, 500, (4, 12), generator=g)
        coords = Coords.from_grid(tok, torch.arange(4) + 4 * i, torch.zeros(4, dtype=torch.long))
        batches.append((x.to(torch.bfloat16), torch.ones(48, dtype=torch.bool), coords))
    opts = StatsOptions(top_k=4, max_domains=3)
    fast = run(batches, opts)
    general = run(batches, replace(opts, branch_free=True)).result()
    assert fast.topk_floor > 0 and len(calls) < len(batches)
    for f in ("value", "sample_id", "position", "channel"):
        np.testing.assert_array_equal(general["events"][f], fast.result()["events"][f])


def test_pickled_state_continues_the_stream() -> None:
    batches = make_stream(4, torch.bfloat16, seed=7)
    s = run(batches[:2])
    s = pickle.loads(pickle.dumps(s)).to("cpu")
    for x, valid, c in batches[2:]:
        s.update(x, valid, c)
    assert_same(s.result(), run(batches).result(), 0)


def test_input_that_requires_grad_and_non_contiguous_input() -> None:
    batches = make_stream(2, torch.float32, seed=12)
    base = run(batches).result()
    odd = []
    for x, valid, c in batches:
        xt = x.t().contiguous().t().requires_grad_(True)  # column-major view, part of a graph
        assert not xt.is_contiguous()
        odd.append((xt, valid, c))
    assert_same(run(odd).result(), base, 0)


def test_float64_and_float16_inputs() -> None:
    for dtype in (torch.float64, torch.float16):
        batches = make_stream(2, dtype, seed=8)
        res = run(batches).result()
        ref = reference(batches)
        assert res["count"] == ref["count"]
        assert res["quantile_rel_error"] == REL_ERROR
        assert_same(res["quantiles"], ref["quantiles"], REL_ERROR)


def test_groups_can_be_switched_off() -> None:
    batches = make_stream(1, torch.bfloat16)
    off = dict.fromkeys(
        ("moments", "extremes", "histogram", "massive", "channels", "channel_kurtosis", "domains"),
        False,
    )
    s = run(batches, StatsOptions(**off))
    res = s.result()
    assert set(res) == {"dim", "rows", "entries", "count", "nan", "posinf", "neginf", "nonfinite"}
    with pytest.raises(ActscopeError):
        s.quantile(0.5)
    only_kurt = run(batches, StatsOptions(**{**off, "channel_kurtosis": True})).result()
    assert_same(only_kurt["channel_kurtosis"], run(batches).result()["channel_kurtosis"], 0)


def test_quantile_method_accepts_any_level() -> None:
    batches = make_stream(2, torch.bfloat16, seed=9)
    s = run(batches)
    ref = reference(batches)
    absv = np.abs(np.concatenate([x.double()[v].numpy().ravel() for x, v, _ in batches]))
    absv = absv[np.isfinite(absv)]
    levels = [0.25, 0.75, 0.995]
    np.testing.assert_allclose(s.quantile(levels), np.quantile(absv, levels), rtol=1e-12)
    assert s.quantile(0.5)[0] == pytest.approx(ref["quantiles"]["p50"], rel=1e-12)


def test_empty_and_invalid_use() -> None:
    empty = SiteStats(OPTS)
    assert empty.result()["count"] == 0
    assert np.isnan(empty.quantile([0.5])).all()
    batches = make_stream(1, torch.bfloat16)
    s = run(batches)
    x, valid, c = batches[0]
    s.update(
        x[:0],
        valid[:0],
        Coords(*(t[:0] for t in (c.sample_id, c.position, c.token_id, c.domain_id))),
    )
    none_valid = run([(x, torch.zeros_like(valid), c)]).result()
    assert (
        none_valid["rows"] == 0
        and math.isnan(none_valid["mean"])
        and none_valid["events"]["value"].size == 0
    )
    with pytest.raises(ActscopeError):
        s.update(x[:, :5], valid, c)
    with pytest.raises(ActscopeError):
        s.merge(SiteStats(top_k=3))
    with pytest.raises(ActscopeError):
        s.merge(run([(x[:, :5].contiguous(), valid, c)], StatsOptions(top_k=10, max_domains=3)))
    with pytest.raises(ActscopeError):
        s.merge("not a reducer")  # type: ignore[arg-type]
    with pytest.raises(ActscopeError):
        StatsOptions(top_k=0)
    with pytest.raises(ActscopeError):
        StatsOptions(quantiles=(1.5,))
    assert SiteStats(OPTS).merge(SiteStats(OPTS, branch_free=True)).result()["count"] == 0


def test_zero_and_near_zero_fractions() -> None:
    x = torch.tensor([[0.0, 1e-4, -5e-4, 2.0], [0.0, 0.0, 3.0, -1e-3]]).bfloat16()
    c = Coords.from_grid(torch.zeros(1, 2, dtype=torch.long), torch.tensor([0]))
    s = SiteStats(OPTS)
    s.update(x, torch.ones(2, dtype=torch.bool), c)
    res = s.result()
    assert res["zeros"] == 3 and res["zero_frac"] == 3 / 8
    # eps 2^-10 ~ 9.77e-4: 1e-3 (bf16 1.0010e-3) is not below it
    assert res["near_zero"] == 5 and res["near_zero_eps"] == 2.0**-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_update_never_synchronises() -> None:
    batches = [
        (
            x.cuda(),
            v.cuda(),
            Coords(*(t.cuda() for t in (c.sample_id, c.position, c.token_id, c.domain_id))),
        )
        for x, v, c in make_stream(3, torch.bfloat16, seed=10)
    ]
    s = SiteStats(OPTS)
    s.update(*batches[0])  # allocation of the state may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in batches[1:]:
            s.update(*b)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu = run(make_stream(3, torch.bfloat16, seed=10)).result()
    assert_same(s.result(), cpu, 1e-6, 1e-6)


def test_branch_free_update_never_reads_values_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU stand-in for the CUDA check: reading a tensor value in update raises."""
    batches = make_stream(3, torch.bfloat16, seed=11)
    s = SiteStats(OPTS, branch_free=True)
    s.update(*batches[0])

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("host read of a tensor value during update")

    for name in ("__bool__", "item", "tolist", "cpu", "numpy", "nonzero", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    for b in batches[1:]:
        s.update(*b)
    monkeypatch.undo()
    assert_same(s.result(), run(batches, replace(OPTS, branch_free=True)).result(), 0)
    assert_same(s.result(), run(batches).result(), 1e-5, 1e-9)  # the fused CPU path
