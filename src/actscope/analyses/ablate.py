"""``actscope ablate``: remove massive activations or outlier channels, measure perplexity.

Reproduces the intervention of Sun et al. (Massive Activations in LLMs) on any model:

1. **Detection, from a profile run** (no hard-coded channels): every residual-stream channel
   with entries meeting Sun's criterion (``tables/massive_channels.parquet``, per-token
   median; else the ``massive`` events, layer-wide median) is a massive channel. Its onset
   ("first seen") is the earliest residual site, in execution order, where its massive-entry
   count reaches half of its peak count over sites: Sun et al.'s massive activations appear
   at one layer and persist, and a rare earlier hit (one token in a 100k-token profile)
   would otherwise move the edit to a site where it almost never fires. The criterion's
   thresholds are read from
   the profile's manifest (default 100 and 1000). Channels are ranked for the top-k
   experiment by their massive-entry count over residual sites, then by their largest
   recorded |a| over residual sites (top events, and per-channel ``max_abs`` rows of
   ``site_stats`` when the profile has them).
2. **Edit sites**: each channel is edited at the stream-changing site where it first
   appears: ``embed``, ``resid_pre.L``, or the layer output ``resid_post.L`` (an appearance
   at ``resid_mid.L`` is edited at ``resid_post.L``, since editing the MLP norm's input would
   not change the residual stream).
3. **Interventions**, each evaluated on the held-out part of the corpus:

   * ``massive-zero`` / ``massive-mean``: the entries of the massive channels that meet the
     criterion in the current forward pass are set to 0, or to the mean of the massive
     entries of that channel at that site on the calibration part (``layers="first"``: where
     each channel first appears, as Sun et al.; ``"all"``: and at every later layer output);
   * ``topk-zero`` / ``topk-mean``: the k top-ranked channels are set to 0 (or their
     calibration mean) for every token at ``embed`` and every ``resid_post``: the channels are
     removed from the residual stream;
   * ``random-zero`` / ``random-mean``: the same with k random channels outside the top
     ranking (seeded), the control for the top-k result.

Perplexity: ``exp(mean NLL)`` over the real predicted tokens (see :mod:`.perplexity`).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from actscope.analyses.quant.e2e import nll_under
from actscope.capture.runner import run
from actscope.capture.trace import Edit, Trace, sitemap_of
from actscope.data import (
    BOS_POLICIES,
    Batch,
    Corpus,
    default_pad_id,
    load_corpus,
    make_batches,
    tokenize_corpus,
)
from actscope.errors import DataError
from actscope.interventions.ablate import EditCounter, channel_values, massive_entries
from actscope.utils import checks

RESIDUAL_KINDS = ("embed", "resid_pre", "resid_mid", "resid_post")
ONSET_FRACTION = 0.5
"""A channel's onset: the earliest residual site with at least this share of its peak count."""
_KIND_ORDER = {"embed": 0, "resid_pre": 1, "resid_mid": 2, "resid_post": 3}


@dataclass
class Targets:
    """What a profile says about massive activations (see the module docstring).

    ``first_seen`` maps every massive channel to the residual site where it first meets the
    criterion; ``sites`` groups the channels by the site where they are edited.
    """

    first_seen: dict[int, str]
    sites: dict[str, list[int]]
    ranking: pd.DataFrame
    abs_threshold: float = 100.0
    ratio: float = 1000.0
    median: str = "token"
    profile_means: dict[int, float] = field(default_factory=dict)

    @property
    def channels(self) -> list[int]:
        return sorted(self.first_seen)

    @property
    def found(self) -> bool:
        return bool(self.first_seen)

    @property
    def first_site(self) -> str | None:
        return min(self.first_seen.values(), key=_order) if self.first_seen else None

    @property
    def edit_site(self) -> str | None:
        return min(self.sites, key=_order) if self.sites else None


def edit_site_of(site: str) -> str:
    """The stream-changing site for an appearance at ``site`` (see the module docstring)."""
    kind, layer = _kind_layer(site)
    return site if kind in ("embed", "resid_pre") else f"resid_post.{layer}"


def _kind_layer(site: str) -> tuple[str, int | None]:
    parts = site.split(".")
    return parts[0], int(parts[1]) if len(parts) > 1 and parts[1].lstrip("-").isdigit() else None


def _order(site: str) -> tuple[int, int]:
    kind, layer = _kind_layer(site)
    return (-1 if layer is None else layer, _KIND_ORDER.get(kind, 9))


def read_profile(path: str | Path) -> dict[str, Any]:
    """Tables (by stem) and manifest of a profile run directory (see
    :func:`~actscope.analyses.profile.write.read_manifest` for what is refused)."""
    from actscope.analyses.rundirs import read_manifest

    p = Path(path)
    manifest = read_manifest(p, "profile")
    tables = p / "tables"
    if not tables.is_dir():
        raise DataError(f"{p} is an incomplete profile run (no tables/ folder)")
    try:
        frames = {f.stem: pd.read_parquet(f) for f in sorted(tables.glob("*.parquet"))}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the tables of profile run {p}: {exc}") from exc
    return {"manifest": manifest, "tables": frames, "path": p}


def _events(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(top-|a| events, massive events) in whichever layout the profile wrote."""
    top = tables.get("topk_events", tables.get("events", pd.DataFrame()))
    if "massive_events" in tables:
        mass = tables["massive_events"]
    elif "massive" in top:
        mass = top[top["massive"].astype(bool)]
    else:
        mass = pd.DataFrame(columns=top.columns)
    return top, mass


def _residual(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty or "site" not in df:
        return df
    kinds = df["kind"] if "kind" in df else df["site"].map(lambda s: _kind_layer(s)[0])
    return df[kinds.isin(RESIDUAL_KINDS)]


def detect_targets(profile: dict[str, Any] | str | Path) -> Targets:
    """Massive-activation coordinates and the channel ranking from a profile run."""
    prof = read_profile(profile) if isinstance(profile, (str, Path)) else profile
    tables = prof["tables"]
    cfg = prof.get("manifest", {}).get("config", {}) or {}
    abs_t = float(cfg.get("massive_abs", 100.0))
    ratio = float(cfg.get("massive_ratio", 1000.0))
    top, mass = _events(tables)
    top, mass = _residual(top), _residual(mass)
    chans = _residual(tables.get("massive_channels", pd.DataFrame()))
    median = "token"  # massive_channels counts entries meeting the per-token-median criterion
    if chans.empty and not mass.empty:  # massive events: layer-wide median
        chans = mass.groupby(["site", "channel"]).size().rename("count").reset_index()
        median = "layer"
    first_seen: dict[int, str] = {}
    for c, sub in chans.groupby("channel") if not chans.empty else []:
        per_site = sub.groupby("site")["count"].sum()
        onset = per_site[per_site >= ONSET_FRACTION * per_site.max()].index
        first_seen[int(c)] = min(onset, key=_order)
    sites: dict[str, list[int]] = {}
    for c, site in sorted(first_seen.items()):
        sites.setdefault(edit_site_of(site), []).append(c)
    score = pd.DataFrame({"channel": pd.Series(dtype=int)})
    if not chans.empty:
        score = chans.groupby("channel")["count"].sum().rename("massive_count").reset_index()
    maxima = []
    if not top.empty:
        vals = top.assign(abs_value=top["value"].abs()) if "abs_value" not in top else top
        maxima.append(vals[["channel", "abs_value"]])
    per_channel = _residual(tables.get("site_stats", pd.DataFrame()))
    if "channel" in per_channel and "statistic" in per_channel:
        rows = per_channel[
            per_channel["channel"].notna()
            & per_channel["statistic"].isin(["channel_max_abs", "max_abs"])
        ]
        maxima.append(rows.rename(columns={"value": "abs_value"})[["channel", "abs_value"]])
    if maxima:
        allmax = pd.concat(maxima, ignore_index=True)
        allmax["channel"] = allmax["channel"].astype(int)
        mx = allmax.groupby("channel")["abs_value"].max().rename("max_abs").reset_index()
        score = score.merge(mx, on="channel", how="outer")
    for col in ("massive_count", "max_abs"):
        if col not in score:
            score[col] = 0.0
    score = score.fillna(0.0).sort_values(["massive_count", "max_abs"], ascending=False)
    score["channel"] = score["channel"].astype(int)
    score["rank"] = range(1, len(score) + 1)
    means: dict[int, float] = {}
    for c, site in first_seen.items():
        at = mass[(mass["site"] == site) & (mass["channel"] == c)] if not mass.empty else mass
        if len(at):
            means[c] = float(at["value"].mean())
    ranking = score.reset_index(drop=True)
    return Targets(first_seen, sites, ranking, abs_t, ratio, median, means)


@dataclass
class AblationConfig:
    """Options of an ablation run (recorded in the manifest)."""

    modes: list[str] = field(default_factory=lambda: ["zero", "mean"])
    topk: list[int] = field(default_factory=lambda: [1, 2, 4])
    random_control: bool = True
    layers: str = "first"
    median: str = "auto"
    calib_tokens: int = 4096
    eval_tokens: int = 16384
    seq_len: int = 256
    batch_size: int = 8
    split: float = 0.5
    seed: int = 0
    bos: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse unknown modes, layers and medians, and sizes or fractions out of range."""
        for name in ("calib_tokens", "eval_tokens", "seq_len", "batch_size"):
            checks.integer(getattr(self, name), name)
        checks.number(self.split, "split", 0.0, 1.0, low_open=True, high_open=True)
        checks.one_of(self.bos, "bos", BOS_POLICIES)
        bad = [m for m in self.modes if m not in ("zero", "mean")]
        if bad or not self.modes:
            raise DataError(f"ablation modes must be zero and/or mean, got {self.modes}")
        if self.layers not in ("first", "all"):
            raise DataError(f"layers must be 'first' or 'all', got {self.layers!r}")
        if self.median not in ("auto", "token", "layer"):
            raise DataError(f"median must be auto, token or layer, got {self.median!r}")
        if any(k < 1 for k in self.topk):
            raise DataError(f"top-k values must be >= 1, got {self.topk}")


@dataclass
class AblationResult:
    """Perplexity per intervention, the detected targets and the data used."""

    model: str
    table: pd.DataFrame
    targets: Targets
    data: dict[str, Any]


class _Means:
    """Calibration consumer: per-channel mean of all entries, and of massive entries."""

    def __init__(self, sites: list[str], massive_sites: list[str], t: Targets, median: str) -> None:
        self.sites = sites
        self.massive_sites = set(massive_sites)
        self.channels = t.channels
        self.t = t
        self.median = median
        self.sum: dict[str, Tensor] = {}
        self.count: dict[str, Tensor] = {}
        self.m_sum: dict[str, Tensor] = {}
        self.m_count: dict[str, Tensor] = {}

    def __call__(self, name: str, x: Tensor, mask: Tensor | None) -> None:
        if name not in self.sites:
            return
        xf = x.float()
        m = (
            torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
            if mask is None
            else mask.bool()
        )
        w = m[..., None].float()
        s = (xf * w).sum(dim=tuple(range(x.dim() - 1)), dtype=torch.float64)
        n = m.sum()
        self.sum[name] = self.sum.get(name, 0) + s
        self.count[name] = self.count.get(name, 0) + n
        if self.channels and name in self.massive_sites:
            ch = torch.tensor(self.channels, device=x.device)
            a = xf.abs()
            if self.median == "token":
                med = a.median(dim=-1, keepdim=True).values
            else:
                med = torch.where(m[..., None], a, float("nan")).nanmedian()
            sub = a.index_select(-1, ch)
            hit = (sub > self.t.abs_threshold) & (sub >= self.t.ratio * med) & m[..., None]
            vals = (xf.index_select(-1, ch) * hit).sum(dim=tuple(range(x.dim() - 1)))
            cnt = hit.sum(dim=tuple(range(x.dim() - 1)))
            self.m_sum[name] = self.m_sum.get(name, 0) + vals.double()
            self.m_count[name] = self.m_count.get(name, 0) + cnt

    def channel_mean(self, site: str) -> Tensor:
        return (self.sum[site] / self.count[site].clamp(min=1)).float()

    def massive_mean(self, site: str) -> Tensor | None:
        if site not in self.m_sum:
            return None
        c = self.m_count[site]
        return torch.where(c > 0, self.m_sum[site] / c.clamp(min=1), 0.0).float()


def _batches(lm: Any, corpus: Corpus, tokens: int, cfg: AblationConfig) -> list[Batch]:
    tok = tokenize_corpus(
        corpus, lm.tokenizer, seq_len=cfg.seq_len, bos=cfg.bos, max_tokens=tokens, seed=cfg.seed
    )  # type: ignore[arg-type]
    if tok.n_tokens == 0:
        raise DataError(f"corpus part {corpus.name!r} produced no tokens")
    return list(make_batches(tok, cfg.batch_size, "right", default_pad_id(lm.tokenizer)))


def analyze_ablation(
    lm: Any,
    profile: str | Path | dict[str, Any] | Targets,
    corpus: str | Corpus = "default",
    config: AblationConfig | None = None,
    progress: Any = None,
) -> AblationResult:
    """Detect targets from ``profile`` and measure held-out perplexity under each edit.

    ``progress``: an object with ``stage(name, total)`` and ``advance(n)`` (or None).
    """
    cfg = config or AblationConfig()
    cfg.validate()
    if isinstance(profile, (str, Path)):
        profile = read_profile(profile)
    if isinstance(profile, dict) and profile.get("manifest", {}).get("model"):
        where = profile.get("path", "the profile")
        lm.check_same_model(profile["manifest"]["model"], f"profile run {where}")
    lm.check_seq_len(cfg.seq_len)
    t = profile if isinstance(profile, Targets) else detect_targets(profile)
    median = t.median if cfg.median == "auto" else cfg.median
    sm = sitemap_of(lm)
    d = int(sm.config.hidden_size)
    corp = load_corpus(corpus) if isinstance(corpus, str) else corpus
    calib_part, eval_part = corp.split(cfg.split, cfg.seed)
    calib_b = _batches(lm, calib_part, cfg.calib_tokens, cfg)
    eval_b = _batches(lm, eval_part, cfg.eval_tokens, cfg)

    stream = ["embed"] + [f"resid_post.{i}" for i in range(sm.n_layers)]
    massive_plan = _massive_plan(t, stream, cfg.layers)  # site -> channels edited there
    massive_sites = list(massive_plan)
    ranked = [c for c in t.ranking["channel"].tolist() if 0 <= c < d]
    ks = [k for k in cfg.topk if k <= len(ranked)]
    rng = random.Random(cfg.seed)
    pool = [c for c in range(d) if c not in set(ranked[: max(ks, default=0)])]
    controls = {k: sorted(rng.sample(pool, k)) for k in ks} if cfg.random_control else {}

    means = _Means(list(dict.fromkeys(stream + massive_sites)), massive_sites, t, median)
    if progress is not None:
        progress.stage("calibration", sum(b.n_tokens for b in calib_b))
    run(
        lm,
        calib_b,
        means.sites,
        [means],
        stop_early=False,
        progress=progress.advance if progress is not None else None,
    )

    plan: list[tuple[str, str, list[int], dict[str, Edit], EditCounter]] = []
    for mode in cfg.modes:
        if t.found:
            counter = EditCounter()
            edits = {}
            for site, chans in massive_plan.items():
                vals = None
                if mode == "mean":
                    mm = means.massive_mean(site)
                    pos = [t.channels.index(c) for c in chans]
                    vals = mm[pos] if mm is not None else torch.zeros(len(chans))
                edits[site] = massive_entries(
                    chans,
                    vals,
                    abs_threshold=t.abs_threshold,
                    ratio=t.ratio,
                    median=median,
                    counter=counter,
                )
            where = ",".join(f"{s}:{'+'.join(map(str, c))}" for s, c in massive_plan.items())
            if cfg.layers == "all":
                where = f"{t.edit_site} and every later layer output"
            plan.append((f"massive-{mode}", where, t.channels, edits, counter))
        for k in ks:
            for label, cs in (("topk", ranked[:k]), ("random", controls.get(k))):
                if cs is None:
                    continue
                counter = EditCounter()
                edits = {
                    s: channel_values(
                        cs,
                        None if mode == "zero" else means.channel_mean(s)[torch.tensor(cs)],
                        counter=counter,
                    )
                    for s in stream
                }
                plan.append((f"{label}{k}-{mode}", "embed,resid_post.*", cs, edits, counter))

    if progress is not None:
        progress.stage("perplexity", len(plan) + 1)
    base = nll_under(lm, eval_b)
    rows = [_row("none", "", [], base, 0, base)]
    if progress is not None:
        progress.advance(1)
    for name, where, cs, edits, counter in plan:
        with Trace(lm, edits=edits) as tr:
            nll = nll_under(lm, eval_b, tr)
        rows.append(_row(name, where, cs, nll, counter.value(), base))
        if progress is not None:
            progress.advance(1)
    table = pd.DataFrame(rows)
    data = {
        "calibration_tokens": sum(b.n_tokens for b in calib_b),
        "evaluation_tokens": sum(b.n_tokens for b in eval_b),
        "corpus": corp.name,
        "corpus_hash": corp.hash,
        "median": median,
        "massive_means": {
            s: [round(float(v), 4) for v in mm]
            for s in massive_sites
            if (mm := means.massive_mean(s)) is not None
        },
    }
    return AblationResult(getattr(lm, "name", "model"), table, t, data)


def _massive_plan(t: Targets, stream: list[str], layers: str) -> dict[str, list[int]]:
    """Edit sites and their channels: where each channel first appears (``layers="first"``),
    or from there on at every residual layer output (``"all"``)."""
    if not t.found:
        return {}
    if layers == "first":
        return {s: t.sites[s] for s in sorted(t.sites, key=_order)}
    plan: dict[str, list[int]] = {}
    for site in sorted(set(stream) | set(t.sites), key=_order):
        chans = sorted(c for s, cs in t.sites.items() if _order(s) <= _order(site) for c in cs)
        if chans and (site in stream or site in t.sites):
            plan[site] = chans
    return plan


def _row(name: str, where: str, cs: list[int], nll: Any, changed: int, base: Any) -> dict[str, Any]:
    ppl = nll.perplexity
    return {
        "intervention": name,
        "sites": where,
        "channels": ",".join(str(c) for c in cs),
        "k": len(cs),
        "entries_changed": changed,
        "nll": nll.mean,
        "perplexity": ppl,
        "delta_ppl": ppl - base.perplexity,
        "ratio": ppl / base.perplexity if base.perplexity else math.nan,
        "tokens": nll.count,
    }


def run_ablation(
    lm: Any,
    profile: str | Path,
    out: str | Path,
    corpus: str | Corpus = "default",
    config: AblationConfig | None = None,
    progress: Any = None,
) -> AblationResult:
    """:func:`analyze_ablation`, then write the run directory ``out`` atomically."""
    from actscope.runs import RunWriter

    cfg = config or AblationConfig()
    args = {"profile": str(profile), **asdict(cfg)}
    with RunWriter(out, "ablate", args, inputs=[profile]) as w:
        res = analyze_ablation(lm, profile, corpus, cfg, progress)
        t = res.targets
        w.manifest.update(
            {
                "model": lm.describe() if hasattr(lm, "describe") else {"name": res.model},
                "config": asdict(cfg),
                "profile": str(profile),
                "data": res.data,
            }
        )
        w.table("ablation", res.table)
        w.table("channel_ranking", t.ranking)
        summary = {
            "model": res.model,
            "massive_found": t.found,
            "first_site": t.first_site,
            "edit_site": t.edit_site,
            "channels": t.channels,
            "first_seen": {str(c): site for c, site in t.first_seen.items()},
            "edit_sites": t.sites,
            "criterion": {
                "abs_threshold": t.abs_threshold,
                "ratio": t.ratio,
                "median": res.data["median"],
            },
            "perplexity": {r.intervention: r.perplexity for r in res.table.itertuples()},
        }
        w.json("summary.json", summary)
        w.text("report.html", _report(res, cfg).render())
    return res


def _report(res: AblationResult, cfg: AblationConfig) -> Any:
    from actscope.report import Report, new_figure

    t = res.targets
    rep = Report(f"Outlier interventions: {res.model}", subtitle="actscope ablate")
    rep.kv(
        "Detection (from the profile)",
        {
            "massive activations found": t.found,
            "first residual site with massive entries": t.first_site,
            "massive channels (first seen at)": ", ".join(
                f"{c} ({site})" for c, site in sorted(t.first_seen.items())
            )
            or "none",
            "edited at": "; ".join(f"{s}: {c}" for s, c in t.sites.items()) or "none",
            "criterion": f"|a| > {t.abs_threshold:g} and |a| >= {t.ratio:g} x "
            f"{res.data['median']} median of |a|",
            "mean of the profile's massive events": ", ".join(
                f"{c}: {v:.4g}" for c, v in t.profile_means.items()
            )
            or "n/a",
            "evaluation tokens": res.data["evaluation_tokens"],
        },
    )
    tab = res.table
    fig, ax = new_figure(width=7.0, height=0.35 * len(tab) + 1.2)
    ax.barh(tab["intervention"], tab["perplexity"], color="tab:blue")
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("held-out perplexity (log scale)")
    rep.figure(fig, "Perplexity per intervention (none = the model as is)", heading="Perplexity")
    rep.table(tab, "Perplexity, change and entries changed per intervention", max_rows=100)
    rep.table(t.ranking.head(20), "Channel ranking used for the top-k removal", heading="Channels")
    return rep
