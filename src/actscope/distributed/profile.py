"""``profile_ray``: the activation profile computed by Ray actors and merged on the driver.

    result = profile_ray("smollm2-135m", "default", ProfileConfig(max_tokens=100_000), workers=2)

How the work is split. Every worker is one Ray actor holding one copy of the model (on a GPU
when the cluster has one). Each actor tokenises and batches the whole corpus exactly as a
single-process :func:`~actscope.analyses.profile.profile` does (tokenising is cheap next to
the forward passes) and checks that it got the same batch plan as the others (SHA-256 of the
batches). The plan is cut into ``shards`` strided sets of batches, shard ``s`` holding
batches ``s, s + shards, s + 2 shards, ...``; shard ``s`` runs on actor ``s mod workers``.

Why batches and not samples: a batch's padding and shape change the floating-point rounding
of the forward pass, so splitting the corpus at the level of the single-process batches makes
every activation bit-identical to the single run. Merging the per-shard states (in shard
order) then gives exactly the same counts, maxima, histograms, quantiles and top-K events;
sums and moments differ only by the order of float64 additions.

The merged state is finalised on actor 0 (it holds the tokenizer that decodes event tokens
and the model for the token x channel view) and the run directory is written by the driver.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from actscope.analyses.profile import (
    ProfileConfig,
    ProfileResult,
    ProfileState,
    collect,
    finalize,
    prepare_batches,
    write_run,
)
from actscope.analyses.profile.view import token_channel_view
from actscope.data import Corpus, load_corpus
from actscope.distributed.cluster import ray_session, require_ray, worker_resources
from actscope.errors import ActscopeError


def batch_plan_hash(batches: list[Any]) -> str:
    """SHA-256 over every batch's input ids, mask and sample ids (the plan's identity)."""
    h = hashlib.sha256()
    for b in batches:
        for t in (b.input_ids, b.attention_mask, b.sample_ids, b.chunk_ids):
            h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()


def shard_batches(batches: list[Any], shard: int, shards: int) -> list[Any]:
    """Batches ``shard, shard + shards, ...`` of the plan (strided, so lengths balance)."""
    if not 0 <= shard < shards:
        raise ActscopeError(f"shard must satisfy 0 <= shard < shards, got {shard}/{shards}")
    return batches[shard::shards]


class ProfileWorker:
    """One model and the corpus' batch plan; collects shards and finalises merged states."""

    def __init__(
        self, model_spec: str, corpus: Corpus, config: ProfileConfig, dtype: str, device: str
    ) -> None:
        from actscope.models import load_model

        t0 = time.perf_counter()
        self.lm = load_model(model_spec, dtype=dtype, device=device)
        self.config = config
        self.batches, self.policy = prepare_batches(self.lm, corpus, config)
        self.load_seconds = time.perf_counter() - t0
        self.cpu_seconds = 0.0

    def plan(self) -> dict[str, Any]:
        """The batch plan's hash and size, the data policy, and where the model landed."""
        return {
            "hash": batch_plan_hash(self.batches),
            "batches": len(self.batches),
            "policy": self.policy,
            "device": str(self.lm.device),
            "load_seconds": self.load_seconds,
        }

    def collect(self, shard: int, shards: int, corpus_info: dict[str, Any]) -> ProfileState:
        """The mergeable state of one shard."""
        mine = shard_batches(self.batches, shard, shards)
        c0 = time.process_time()
        state = collect(self.lm, mine, self.config, corpus_info=corpus_info, policy=self.policy)
        self.cpu_seconds += time.process_time() - c0
        return state

    def cpu_time(self) -> float:
        """CPU seconds (all threads of this worker) spent collecting shards so far."""
        return self.cpu_seconds

    def finalize(self, state: ProfileState, domains: list[str]) -> ProfileResult:
        """Tables and summary of a merged state, plus the token x channel view."""
        result = finalize(state, self.lm.tokenizer, domains=domains)
        result.view = token_channel_view(self.lm, self.batches, result, self.config)
        return result


def corpus_record(spec: str | Any, corpus: Corpus) -> dict[str, Any]:
    """The corpus entry of a profile manifest (as the single-process profile writes it)."""
    return {
        "spec": spec if isinstance(spec, str) else "custom",
        "hash": corpus.hash,
        "domain_mix": corpus.domain_mix(),
        "domains": list(corpus.domains),
    }


def merge_states(states: list[ProfileState], policy: dict[str, Any] | None = None) -> ProfileState:
    """Merge shard states in the order given (the first one is updated in place).

    ``policy``: the data policy of the whole batch plan, set on the merged state (every shard
    carries that same record, which ``ProfileState.merge`` would otherwise add up). Runs under ``torch.inference_mode``: states collected in this process hold inference
    tensors (created inside the capture loop), which accept in-place updates only there.
    """
    if not states:
        raise ActscopeError("no shard state to merge")
    merged = states[0]
    with torch.inference_mode():
        for st in states[1:]:
            merged.merge(st)
    if policy is not None:
        merged.policy = copy.deepcopy(policy)
    return merged


def profile_ray(
    model_spec: str,
    corpus: str | Corpus = "default",
    config: ProfileConfig | None = None,
    workers: int = 2,
    *,
    shards: int | None = None,
    out: str | Path | None = None,
    dtype: str = "auto",
    device: str = "auto",
    address: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ProfileResult:
    """Profile ``model_spec`` on ``corpus`` with ``workers`` Ray actors and merge the shards.

    ``shards`` (default ``workers``) strided shards of the batch plan are spread round-robin
    over the actors. ``address`` joins an existing cluster; otherwise a Ray runtime already
    initialised in this process is used, or a local one with ``workers`` CPUs is started and
    stopped. ``progress(n_tokens)`` is called as each shard finishes. The result equals
    :func:`actscope.analyses.profile.profile` on the same corpus and config (see the module
    docstring); ``manifest["distributed"]`` records workers, shards and timings.
    """
    if not isinstance(model_spec, str | Path):
        raise ActscopeError("profile_ray needs a model spec (name or path) that workers can load")
    if workers < 1:
        raise ActscopeError(f"workers must be >= 1, got {workers}")
    require_ray("profiling with Ray (--ray)")
    cfg = config or ProfileConfig()
    corp = load_corpus(corpus) if isinstance(corpus, str) else corpus
    info = corpus_record(corpus, corp)
    t_start = time.perf_counter()
    with ray_session(address, num_cpus=workers) as ray:
        res = worker_resources(ray, workers, device)
        dev = device if device != "auto" else res.device
        actor_cls = ray.remote(ProfileWorker).options(**res.options())
        corpus_ref = ray.put(corp)
        actors = [
            actor_cls.remote(str(model_spec), corpus_ref, cfg, dtype, dev) for _ in range(workers)
        ]
        try:
            plans = ray.get([a.plan.remote() for a in actors])
            if len({p["hash"] for p in plans}) != 1:
                raise ActscopeError(
                    "Ray workers built different batch plans (different corpus or tokenizer "
                    "files on different nodes?)"
                )
            n_shards = max(1, min(shards or workers, plans[0]["batches"]))
            t_collect = time.perf_counter()
            pending = {
                actors[s % workers].collect.remote(s, n_shards, info): s for s in range(n_shards)
            }
            states: dict[int, ProfileState] = {}
            shard_seconds: dict[int, float] = {}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                s = pending.pop(done[0])
                states[s] = ray.get(done[0])
                shard_seconds[s] = round(time.perf_counter() - t_collect, 3)
                if progress is not None:
                    progress(states[s].tokens)
            collect_wall = time.perf_counter() - t_collect
            cpu_seconds = ray.get([a.cpu_time.remote() for a in actors])
            ordered = [states[s] for s in range(n_shards)]
            state_bytes = sum(len(pickle.dumps(st)) for st in ordered)
            shard_tokens = [st.tokens for st in ordered]
            t_merge = time.perf_counter()
            merged = merge_states(ordered, policy=plans[0]["policy"])
            merge_seconds = time.perf_counter() - t_merge
            t_final = time.perf_counter()
            result = ray.get(actors[0].finalize.remote(merged, list(corp.domains)))
            finalize_seconds = time.perf_counter() - t_final
        finally:
            for a in actors:
                ray.kill(a)
        ray_version = ray.__version__
    result.manifest["tokens_per_s"] = (
        round(merged.tokens / collect_wall, 1) if collect_wall else None
    )
    result.manifest["distributed"] = {
        "engine": "ray",
        "ray_version": ray_version,
        "address": address or "local",
        "workers": workers,
        "shards": n_shards,
        "split": "strided batches of the single-process batch plan",
        "batch_plan_sha256": plans[0]["hash"],
        "worker_num_cpus": res.num_cpus,
        "worker_num_gpus": res.num_gpus,
        "worker_devices": [p["device"] for p in plans],
        "load_seconds": [round(p["load_seconds"], 3) for p in plans],
        "collect_wall_seconds": round(collect_wall, 3),
        "worker_cpu_seconds": [round(c, 3) for c in cpu_seconds],
        "shard_finish_seconds": [shard_seconds[s] for s in range(n_shards)],
        "shard_tokens": shard_tokens,
        "state_bytes": state_bytes,
        "merge_seconds": round(merge_seconds, 4),
        "finalize_seconds": round(finalize_seconds, 3),
        "wall_seconds": round(time.perf_counter() - t_start, 3),
    }
    if out is not None:
        result.out = write_run(result, out)
    return result
