"""``actscope sweep models.yaml``: profile several models as separate Ray tasks, compare them.

The YAML file::

    corpus: default              # or a corpus path (relative to the YAML file's folder)
    dtype: auto                  # default model dtype and device of every entry
    device: auto
    profile:                     # ProfileConfig fields shared by every model
      max_tokens: 20000
      sites: [all]
    models:
      - smollm2-135m             # a spec: the run is named after it
      - name: gemma              # or a mapping with its own name, dtype, device
        model: gemma3-270m

Output folder ``OUT``::

    OUT/models/<name>/     one profile run directory per model (as `actscope profile` writes)
    OUT/comparison/        `actscope compare` of the successful runs: report.html, tables
    OUT/sweep.json         what ran: models, status, tokens, tokens/s, errors, timings

Each model is one task (one CPU, or one GPU share when the cluster has GPUs); a task returns
its :class:`~actscope.analyses.profile.ProfileResult` and the driver writes the run folder, so
workers need no shared file system. ``executor="local"`` runs the same tasks one after the
other in this process (no Ray needed).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from actscope.analyses.profile import ProfileConfig, ProfileResult, compare_runs, write_run
from actscope.data.loaders import read_text
from actscope.distributed.cluster import ray_session, require_ray, worker_resources
from actscope.errors import ActscopeError, suggest
from actscope.runs import check_out, to_jsonable, write_failure
from actscope.utils.atomic import atomic_write_text

_TOP_KEYS = ("models", "corpus", "dtype", "device", "profile", "out")
_MODEL_KEYS = ("name", "model", "dtype", "device")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class SweepError(ActscopeError):
    """A sweep file that is malformed, or a sweep in which models failed."""


@dataclass(frozen=True)
class SweepModel:
    """One model of a sweep: run folder ``name``, loader ``model`` spec, dtype and device."""

    name: str
    model: str
    dtype: str = "auto"
    device: str = "auto"


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    models: list[SweepModel]
    corpus: str = "default"
    config: ProfileConfig = field(default_factory=ProfileConfig)
    out: str | None = None


@dataclass
class SweepResult:
    """Run folders of the models that finished, their errors, and the comparison folder."""

    out: Path
    runs: dict[str, Path]
    errors: dict[str, str]
    comparison: Path | None
    record: dict[str, Any]


def _run_name(spec: str) -> str:
    """Folder name for a model spec: its last path part, unsafe characters replaced."""
    return _SAFE.sub("_", Path(spec.rstrip("/")).name.replace("tiny:", "tiny-")) or "model"


def parse_sweep(obj: Any, base: Path | None = None) -> SweepSpec:
    """Validate a sweep mapping (see module docstring); relative corpus paths use ``base``."""
    if not isinstance(obj, dict):
        raise SweepError("a sweep file must be a mapping with a 'models' list")
    unknown = [k for k in obj if k not in _TOP_KEYS]
    if unknown:
        raise SweepError(
            f"unknown sweep key '{unknown[0]}'{suggest(str(unknown[0]), _TOP_KEYS)}; "
            f"known: {', '.join(_TOP_KEYS)}"
        )
    dtype, device = str(obj.get("dtype", "auto")), str(obj.get("device", "auto"))
    raw = obj.get("models")
    if not isinstance(raw, list) or not raw:
        raise SweepError("the sweep file needs a non-empty 'models' list")
    models = [_parse_model(m, dtype, device) for m in raw]
    names = [m.name for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SweepError(f"model names must be unique; repeated: {', '.join(dup)}")
    corpus = str(obj.get("corpus", "default"))
    relative = corpus != "default" and base is not None and not Path(corpus).is_absolute()
    if relative and base is not None and (base / corpus).exists():
        corpus = str(base / corpus)
    return SweepSpec(models, corpus, _parse_config(obj.get("profile") or {}), obj.get("out"))


def _parse_model(entry: Any, dtype: str, device: str) -> SweepModel:
    if isinstance(entry, str):
        return SweepModel(_folder_name(_run_name(entry)), entry, dtype, device)
    if not isinstance(entry, dict) or "model" not in entry:
        raise SweepError(f"each model must be a spec string or a mapping with 'model': {entry!r}")
    bad = [k for k in entry if k not in _MODEL_KEYS]
    if bad:
        raise SweepError(f"unknown model key '{bad[0]}'; known: {', '.join(_MODEL_KEYS)}")
    spec = str(entry["model"])
    name = _SAFE.sub("_", str(entry.get("name") or _run_name(spec)))
    return SweepModel(
        _folder_name(name), spec, str(entry.get("dtype", dtype)), str(entry.get("device", device))
    )


def _folder_name(name: str) -> str:
    """``name`` when it can name the run folder ``OUT/models/<name>``; SweepError otherwise."""
    if name.startswith("."):
        raise SweepError(
            f"model name '{name}' cannot name a run folder (it starts with '.'); "
            "give the model a 'name'"
        )
    return name


def _parse_config(opts: Any) -> ProfileConfig:
    if not isinstance(opts, dict):
        raise SweepError("'profile' must be a mapping of profile options")
    known = {f.name for f in fields(ProfileConfig)}
    bad = [k for k in opts if k not in known]
    if bad:
        raise SweepError(
            f"unknown profile option '{bad[0]}'{suggest(str(bad[0]), known)}; "
            f"known: {', '.join(sorted(known))}"
        )
    cfg = ProfileConfig(**opts)
    if isinstance(cfg.sites, str):
        cfg.sites = [s for s in cfg.sites.split(",") if s]
    cfg.quantiles = tuple(cfg.quantiles)
    return cfg


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML file."""
    p = Path(path)
    text = read_text(p, "sweep file")
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SweepError(f"{p} is not valid YAML: {first}") from exc
    return parse_sweep(obj, base=p.parent)


def profile_task(
    model: str, corpus: str, config: ProfileConfig, dtype: str, device: str
) -> ProfileResult:
    """Profile one model in this process (the body of one sweep task)."""
    from actscope.analyses.profile import profile

    return profile(model, corpus, config=config, dtype=dtype, device=device)


def _cause(exc: BaseException) -> str:
    """One line naming the original error (Ray wraps task errors in RayTaskError)."""
    inner = getattr(exc, "cause", None) or exc
    text = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {text[-1] if text else ''}"


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    executor: str = "ray",
    address: str | None = None,
    workers: int | None = None,
    on_done: Callable[[str, str], None] | None = None,
) -> SweepResult:
    """Profile every model of ``spec`` as its own task, write the runs and their comparison.

    ``executor``: ``ray`` (tasks on a Ray cluster: ``address``, the runtime already
    initialised, or a local one with ``workers`` CPUs, default one per model) or ``local``
    (one after the other in this process). ``on_done(name, status)`` is called as each model
    finishes. Models that fail are recorded in ``sweep.json`` and left out of the comparison;
    :class:`SweepError` is raised when none succeeded.
    """
    if executor not in ("ray", "local"):
        raise SweepError(f"executor must be 'ray' or 'local', got '{executor}'")
    out = Path(out)
    check_outputs(spec, out)
    t0 = time.perf_counter()
    results: dict[str, ProfileResult] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}

    def finished(name: str, result: ProfileResult | None, error: str | None) -> None:
        seconds[name] = round(time.perf_counter() - t0, 3)
        if result is not None:
            results[name] = result
            write_run(result, out / "models" / name)
        else:
            errors[name] = error or "failed"
        if on_done is not None:
            on_done(name, "ok" if result is not None else f"failed: {errors[name]}")

    if executor == "local":
        for m in spec.models:
            try:
                res = profile_task(m.model, spec.corpus, spec.config, m.dtype, m.device)
            except ActscopeError as exc:
                finished(m.name, None, _cause(exc))
            else:
                finished(m.name, res, None)
    else:
        require_ray("a sweep on Ray (use executor='local' to run without it)")
        _run_on_ray(spec, address, workers, finished)
    return _write_summary(spec, out, executor, results, errors, seconds, time.perf_counter() - t0)


def check_outputs(spec: SweepSpec, out: str | Path) -> None:
    """Check ``OUT`` and every run folder the sweep will replace, before any model is loaded.

    ``OUT`` must be missing, empty or a previous sweep folder; ``OUT/models/<name>`` and
    ``OUT/comparison`` missing, empty or previous runs of their commands, none holding the
    corpus (:func:`actscope.runs.check_out`). Raises :class:`~actscope.errors.OutputError`.
    """
    out = Path(out)
    check_out(out, kind="sweep")
    inputs = [spec.corpus]
    for m in spec.models:
        check_out(out / "models" / m.name, inputs=inputs, command="profile")
    check_out(out / "comparison", inputs=inputs, command="compare")


def _run_on_ray(
    spec: SweepSpec,
    address: str | None,
    workers: int | None,
    finished: Callable[[str, ProfileResult | None, str | None], None],
) -> None:
    n = workers or len(spec.models)
    with ray_session(address, num_cpus=n) as ray:
        res = worker_resources(ray, n, "auto")
        task = ray.remote(profile_task).options(**res.options(), max_retries=0)
        pending = {}
        for m in spec.models:
            device = m.device if m.device != "auto" else res.device
            ref = task.remote(m.model, spec.corpus, spec.config, m.dtype, device)
            pending[ref] = m.name
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as exc:  # a RayTaskError wrapping the task's exception
                finished(name, None, _cause(exc))
            else:
                finished(name, result, None)


def _write_summary(
    spec: SweepSpec,
    out: Path,
    executor: str,
    results: dict[str, ProfileResult],
    errors: dict[str, str],
    seconds: dict[str, float],
    wall: float,
) -> SweepResult:
    order = [m.name for m in spec.models]
    runs = {n: out / "models" / n for n in order if n in results}
    comparison = None
    if runs:
        comparison = out / "comparison"
        compare_runs(list(runs.values()), out=comparison)
    record = {
        "command": "sweep",
        "executor": executor,
        "corpus": spec.corpus,
        "profile": spec.config.to_dict(),
        "models": [
            {
                "name": m.name,
                "model": m.model,
                "dtype": m.dtype,
                "device": m.device,
                "status": "ok" if m.name in results else "failed",
                "error": errors.get(m.name),
                "run": str(runs[m.name]) if m.name in runs else None,
                "tokens": results[m.name].manifest.get("tokens") if m.name in results else None,
                "tokens_per_s": (
                    results[m.name].manifest.get("tokens_per_s") if m.name in results else None
                ),
                "finished_after_seconds": seconds.get(m.name),
            }
            for m in spec.models
        ],
        "comparison": str(comparison) if comparison else None,
        "wall_seconds": round(wall, 3),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "sweep.json", json.dumps(to_jsonable(record), indent=2))
    except OSError as exc:
        mapped = write_failure(exc, out / "sweep.json", kept="the model runs written are kept")
        if mapped is None:
            raise
        raise mapped from exc
    if not runs:
        raise SweepError(
            "every model of the sweep failed: " + "; ".join(f"{n}: {e}" for n, e in errors.items())
        )
    return SweepResult(out, runs, errors, comparison, record)
