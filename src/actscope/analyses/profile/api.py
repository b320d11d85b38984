"""``profile``: the activation-magnitude profile of a model over a corpus.

    result = actscope.profile("smollm2-135m", corpus="default", max_tokens=100_000,
                              out="runs/smollm2")
    result.tables["layers"]        # per (kind, layer): top-1/2/3 |a|, median, kurtosis ...

Three steps, so that work can be split across processes and machines:
:func:`collect` (one pass over batches -> a mergeable :class:`ProfileState`),
``ProfileState.merge`` (combine shards), :func:`finalize` (state -> tables and summary).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from actscope.analyses.profile.collector import ProfileCollector, find_aliases
from actscope.analyses.profile.config import ProfileConfig
from actscope.capture.runner import run
from actscope.capture.trace import sitemap_of
from actscope.data import Corpus, load_corpus, make_batches, policy_record, tokenize_corpus
from actscope.errors import DataError
from actscope.models import LoadedModel, load_model


@dataclass
class ProfileState:
    """Mergeable result of :func:`collect`: statistics per distinct site plus bookkeeping."""

    collector: ProfileCollector
    model: dict[str, Any]
    corpus: dict[str, Any]
    policy: dict[str, Any]
    config: dict[str, Any]
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    seconds: float = 0.0
    shards: int = 1

    def merge(self, other: ProfileState) -> ProfileState:
        """Add a state collected on a disjoint part of the corpus (same model and options)."""
        if self.model.get("file_hash") != other.model.get("file_hash") or (
            self.model.get("name") != other.model.get("name")
        ):
            raise DataError("cannot merge profiles of different models")
        self.collector.merge(other.collector)
        self.tokens += other.tokens
        self.padded_tokens += other.padded_tokens
        self.batches += other.batches
        self.seconds = max(self.seconds, other.seconds)
        self.shards += other.shards
        return self  # ``policy`` describes the shared tokenisation plan: left as it is


@dataclass
class ProfileResult:
    """Tables (pandas), the JSON summary, the manifest and the state they came from."""

    tables: dict[str, pd.DataFrame]
    summary: dict[str, Any]
    manifest: dict[str, Any]
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)
    view: dict[str, Any] | None = None
    out: Path | None = None


def prepare_batches(
    lm: LoadedModel, corpus: Any, config: ProfileConfig
) -> tuple[list[Any], dict[str, Any]]:
    """Tokenise ``corpus`` with the recorded BOS policy and cut it into length-bucketed batches."""
    tok = tokenize_corpus(
        corpus,
        lm.tokenizer,
        seq_len=config.seq_len,
        bos=config.bos,
        max_tokens=config.max_tokens,
        seed=config.seed,
    )
    if not tok.sequences:
        raise DataError("the corpus produced no tokens")
    pad = lm.tokenizer.pad_token_id
    if pad is None:
        pad = lm.tokenizer.eos_token_id or 0
    batches = list(
        make_batches(
            tok, batch_size=config.batch_size, padding_side=config.padding_side, pad_id=pad
        )
    )
    return batches, policy_record(
        tok,
        padding_side=config.padding_side,
        pad_id=int(pad),
        batch_size=config.batch_size,
        bucket=True,
    )


def collect(
    lm: LoadedModel,
    batches: list[Any],
    config: ProfileConfig,
    *,
    corpus_info: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    progress: Any = None,
) -> ProfileState:
    """One streaming pass of ``batches`` through ``lm`` accumulating every statistic."""
    sm = sitemap_of(lm)
    sites = sm.resolve(config.sites)
    aliases = find_aliases(lm, sites)
    collector = ProfileCollector(sites, aliases, config.stats_options(), seq_len=config.seq_len)
    names = [s.name for s in sites if aliases.get(s.name) == s.name]
    info = run(lm, batches, names, [collector], stop_early=True, progress=progress)
    return ProfileState(
        collector=collector,
        model=lm.describe(),
        corpus=corpus_info or {},
        policy=policy or {},
        config=config.to_dict(),
        tokens=info.tokens,
        padded_tokens=info.padded_tokens,
        batches=info.batches,
        seconds=info.seconds,
    )


def profile(
    model: str | LoadedModel = "smollm2-135m",
    corpus: str | Corpus = "default",
    *,
    out: str | Path | None = None,
    config: ProfileConfig | None = None,
    dtype: str = "auto",
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    **overrides: Any,
) -> ProfileResult:
    """Profile ``model`` on ``corpus``; write the run directory to ``out`` when given.

    Keyword overrides set :class:`ProfileConfig` fields (``max_tokens=20_000``, ``sites=[...]``).
    Everything that can be wrong with the input is checked before the first forward pass, in
    this order: options, corpus, model, sites and sequence length. ``on_plan(n_tokens)`` is
    then called with the number of real tokens the run will read, and ``progress(n)`` after
    each batch.
    """
    from actscope.analyses.profile.finalize import finalize
    from actscope.analyses.profile.view import token_channel_view
    from actscope.analyses.profile.write import write_run

    cfg = config or ProfileConfig()
    unknown = [key for key in overrides if not hasattr(cfg, key)]
    if unknown:
        raise TypeError(f"unknown profile option '{unknown[0]}'")
    cfg = dataclasses.replace(cfg, **overrides)  # __post_init__ checks the new values
    t0 = time.perf_counter()
    corp = load_corpus(corpus) if isinstance(corpus, str) else corpus
    lm = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)
    sitemap_of(lm).resolve(cfg.sites)
    lm.check_seq_len(cfg.seq_len)
    batches, policy = prepare_batches(lm, corp, cfg)
    corpus_info = {
        "spec": corpus if isinstance(corpus, str) else corp.name,
        "hash": corp.hash,
        "domain_mix": corp.domain_mix(),
        "domains": list(corp.domains),
    }
    if on_plan is not None:
        on_plan(int(policy["tokens_used"]))
    state = collect(lm, batches, cfg, corpus_info=corpus_info, policy=policy, progress=progress)
    result = finalize(state, lm.tokenizer, domains=list(batches[0].domains))
    result.view = token_channel_view(lm, batches, result, cfg)
    # loading, tokenisation, collection and finalisation (writing is ``write_seconds``)
    result.manifest["wall_seconds"] = round(time.perf_counter() - t0, 3)
    if out is not None:
        result.out = write_run(result, out)
    return result
