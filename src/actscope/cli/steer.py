"""``actscope steer {train,condition,eval,generate}``: steering vectors from the command line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from actscope.cli.common import OutCommand, console, load, out_option
from actscope.errors import ActscopeError

steer_app = typer.Typer(
    help="Train, evaluate and apply steering vectors (CAA, PCA, probes, CAST conditions).",
    no_args_is_help=True,
)

MODEL = typer.Option(
    ..., "--model", "-m", help="embedded name, path, GGUF file, hub id or tiny:FAMILY"
)
DTYPE = typer.Option("auto", help="auto (bf16), bf16, fp16, fp32")
DEVICE = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ...")
OUT = out_option(..., "run folder to write")
VECTOR = typer.Option(..., "--vector", "-v", help="vector file (.safetensors / .gguf) or train run")
PROMPT = typer.Option([], "--prompt", "-p", help="a prompt (repeatable)")
CONDITION = typer.Option(
    [], "--condition", help="condition file from `steer condition` (repeatable)"
)
ANY_MODEL = typer.Option(
    False,
    "--any-model",
    help="apply a vector recorded for other weights (e.g. a base model's vector on a fine-tune)",
)


@contextmanager
def _bar(total: int, label: str) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as prog:
        task = prog.add_task(label, total=total)
        yield lambda n: prog.advance(task, n)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ActscopeError(f"expected comma-separated numbers, got {text!r}") from None


def _split(ds: Any, fraction: float, seed: int, part: int) -> Any:
    return ds if fraction <= 0 or fraction >= 1 else ds.split(fraction, seed)[part]


@steer_app.command("train", cls=OutCommand)
def train_cmd(
    model: str = MODEL,
    dataset: str = typer.Option(..., "--dataset", "-d", help="shipped name (see --help) or JSONL"),
    out: str = OUT,
    site: str = typer.Option(
        "resid_post",
        help="residual site kind: resid_pre, resid_mid, resid_post, or attn_out / mlp_out "
        "(what the sublayers add to the residual stream)",
    ),
    layers: str = typer.Option("all", help="all, 4-12, or 3,5,-1"),
    method: str = typer.Option("mean_diff", help="mean_diff, pca_pair, pca_center, logistic"),
    read: str = typer.Option(
        "",
        help="last, answer, mean, indices:I,J, trim:P,S (default: answer "
        "for A/B items, mean over the completion otherwise)",
    ),
    train_fraction: float = typer.Option(
        0.5, help="fraction used for training (rest held out; 1 = all)"
    ),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(16),
    bootstrap: int = typer.Option(100, help="bootstrap resamples for the direction confidence"),
    padding_side: str = typer.Option(
        "right",
        help="left or right: in fp32 the vector does not depend on it (1e-5 relative L2 on "
        "SmolLM2); in bf16 it moves by 9-14%, see docs/steering.md",
    ),
    gguf_scale: float = typer.Option(1.0, help="scale of the exported llama.cpp control vector"),
    dtype: str = typer.Option(
        "fp32",
        help="fp32 (default: the vector does not depend on padding or batching; bf16 moves it "
        "by 6-14% and by 12-24% from fp32 on SmolLM2), bf16, fp16, auto",
    ),
    device: str = DEVICE,
) -> None:
    """Extract a steering vector at every requested layer and write it (safetensors + GGUF)."""
    from actscope.interventions.steering import load_dataset, train_vector
    from actscope.interventions.steering.vector import check_site_kind
    from actscope.runs import RunWriter

    check_site_kind(site)
    args = {
        k: v
        for k, v in locals().items()
        if k in ("model", "dataset", "site", "layers", "method", "read", "train_fraction", "seed")
    }
    writer = RunWriter(out, "steer train", args)  # created first: wall_seconds covers the run
    ds = load_dataset(dataset)
    train = _split(ds, train_fraction, seed, 0)
    lm = load(model, dtype, device)
    with _bar(2 * len(train), "reading activations") as bar:
        vec = train_vector(
            lm,
            train,
            site=site,
            layers=layers,
            method=method,
            read=read or None,
            batch_size=batch_size,
            padding_side=padding_side,
            n_bootstrap=bootstrap,
            seed=seed,
            progress=bar,
        )
    vec.meta.update(train_fraction=train_fraction, split_seed=seed, full_dataset_hash=ds.hash)
    with writer as run:
        run.manifest["model"] = lm.describe()
        run.manifest["dataset"] = {
            "name": ds.name,
            "hash": ds.hash,
            "kind": ds.kind,
            "records": len(ds),
            "train_records": len(train),
        }
        vec.save(run.file("exports/steering_vector.safetensors"))
        gguf = _export_gguf(vec, run.file("exports/control_vector.gguf"), gguf_scale)
        table = _stats_table(vec)
        run.table("layer_stats", table)
        best = int(table.sort_values("pair_agreement", ascending=False).layer.iloc[0])
        run.json(
            "summary.json",
            {
                "layers": vec.layers,
                "method": method,
                "site": site,
                "gguf": gguf,
                "best_agreement_layer": best,
            },
        )
        run.text("report.html", _train_report(vec, table).render())
    console.print(table.round(3).to_string(index=False))
    console.print(f"[green]wrote[/] {out}/exports/steering_vector.safetensors")


def _export_gguf(vec: Any, path: Path, scale: float) -> str | None:
    ok = [x for x in vec.layers if (x if vec.site == "resid_post" else x - 1) >= 1]
    if vec.site not in ("resid_post", "resid_pre") or not ok:
        path.unlink(missing_ok=True)
        return None
    vec.select(ok).to_gguf(path, scale=scale)
    return path.name


def _stats_table(vec: Any) -> Any:
    import pandas as pd

    return pd.DataFrame([{"layer": x, **vec.stats[x]} for x in vec.layers])


def _train_report(vec: Any, table: Any) -> Any:
    from actscope.report import Report, new_figure

    rep = Report(
        f"Steering vector: {vec.dataset} on {vec.model}",
        subtitle=f"{vec.method} at {vec.site}, read {vec.read}",
    )
    rep.kv("Vector", {k: v for k, v in vec.header().items() if k not in ("stats", "meta")})
    fig, axes = new_figure(ncols=2, width=5.2)
    axes[0].plot(table.layer, table.norm, marker="o")
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("|v|")
    for col in ("explained_variance", "pair_agreement", "bootstrap_cos_p05"):
        if col in table:
            axes[1].plot(table.layer, table[col], marker="o", label=col)
    axes[1].set_xlabel("layer")
    axes[1].legend()
    rep.figure(fig, "Per-layer vector norm and quality statistics", heading="Per layer")
    rep.table(table, "Per-layer statistics", max_rows=200)
    return rep


@steer_app.command("condition", cls=OutCommand)
def condition_cmd(
    model: str = MODEL,
    dataset: str = typer.Option(..., "--dataset", "-d", help="labelled prompts (unpaired JSONL)"),
    out: str = OUT,
    site: str = typer.Option("resid_post"),
    layers: str = typer.Option("all"),
    method: str = typer.Option("mean_diff"),
    scores: str = typer.Option("proj_cos", help="proj_cos, cos or both (comma-separated)"),
    train_fraction: float = typer.Option(0.5),
    cv_folds: int = typer.Option(
        5, help="folds choosing the layer on the training split (0: none)"
    ),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(16),
    dtype: str = DTYPE,
    device: str = DEVICE,
) -> None:
    """Find a CAST condition: grid over layers x thresholds x comparators, F1 / AUC held out."""
    from actscope.interventions.steering import load_dataset, search_condition
    from actscope.runs import RunWriter

    writer = RunWriter(out, "steer condition", {"model": model, "dataset": dataset})
    ds = load_dataset(dataset)
    lm = load(model, dtype, device)
    with _bar(len(ds), "reading activations") as bar:
        res = search_condition(
            lm,
            ds,
            site=site,
            layers=layers,
            method=method,
            scores=[s.strip() for s in scores.split(",") if s.strip()],
            train_fraction=train_fraction,
            cv_folds=cv_folds,
            seed=seed,
            batch_size=batch_size,
            progress=bar,
        )
    c = res.condition
    summary = {
        "site": c.site,
        "threshold": c.threshold,
        "comparator": c.comparator,
        "score": c.score,
        **res.test,
    }
    with writer as run:
        run.manifest["model"] = lm.describe()
        run.manifest["dataset"] = {"name": ds.name, "hash": ds.hash, "records": len(ds)}
        c.save(
            run.file("exports/condition.safetensors"),
            model=lm.name,
            dataset=ds.name,
            dataset_hash=ds.hash,
            family=lm.family,
        )
        run.table("condition_grid", res.table)
        run.json("summary.json", summary)
        from actscope.report import Report

        rep = Report(f"Condition: {ds.name} on {lm.name}")
        rep.kv("Chosen condition", summary)
        rep.table(res.table, "Best threshold per layer, score and comparator", max_rows=400)
        run.text("report.html", rep.render())
    console.print(json.dumps(summary, indent=1))


@steer_app.command("eval", cls=OutCommand)
def eval_cmd(
    model: str = MODEL,
    vector: str = VECTOR,
    dataset: str = typer.Option(..., "--dataset", "-d", help="A/B items (shipped name or JSONL)"),
    out: str = OUT,
    layers: str = typer.Option("", help="layers to sweep (default: the vector's)"),
    multipliers: str = typer.Option("-2,-1,0,1,2"),
    positions: str = typer.Option(
        "instruction", help="instruction (after the user message), all, gen, prompt, START:STOP"
    ),
    scores: str = typer.Option("letter,answer", help="A/B scores: letter (CAA), answer, or both"),
    eval_fraction: float = typer.Option(0.5, help="items of split(f)[1] are used (0 = all)"),
    seed: int = typer.Option(0),
    neutral_tokens: int = typer.Option(4096, help="neutral-corpus tokens for KL and perplexity"),
    side_layers: str = typer.Option("best", help="best or all: where to measure side effects"),
    prompts: str = typer.Option("prompts-open", help="open prompts for samples (name or file)"),
    max_new_tokens: int = typer.Option(40),
    batch_size: int = typer.Option(16),
    any_model: bool = ANY_MODEL,
    dtype: str = DTYPE,
    device: str = DEVICE,
) -> None:
    """A/B score over layers x multipliers, KL and perplexity, samples, HTML report."""
    from actscope.analyses.steer_eval import evaluate, neutral_batches, report
    from actscope.interventions.steering import (
        SteeringVector,
        instruction_window,
        load_dataset,
        load_prompts,
        parse_positions,
    )
    from actscope.interventions.steering.extract import resolve_layers
    from actscope.runs import RunWriter

    writer = RunWriter(
        out,
        "steer eval",
        {
            "model": model,
            "vector": str(vector),
            "dataset": dataset,
            "multipliers": multipliers,
            "positions": positions,
            "scores": scores,
        },
    )
    vec = SteeringVector.load(vector)
    ds = load_dataset(dataset)
    items = _split(ds, eval_fraction, seed, 1).ab_items()
    lm = load(model, dtype, device)
    if not any_model:
        vec.check_model(lm)
    lay = resolve_layers(lm, layers) if layers else vec.layers
    mults = sorted(set(_floats(multipliers)) | {0.0})
    win = instruction_window(lm) if positions == "instruction" else parse_positions(positions)
    neutral = neutral_batches(lm, max_tokens=neutral_tokens) if neutral_tokens > 0 else []
    texts = load_prompts(prompts) if prompts else []
    kinds = [k.strip() for k in scores.split(",") if k.strip()]
    n_side = len(mults) * len(neutral) * (len(lay) if side_layers == "all" else 1)
    n_ab = len(kinds) * -(-len(items) // batch_size) * (1 + len(lay) * (len(mults) - 1))
    with _bar(n_ab + n_side, "steering configurations") as bar:
        ev = evaluate(
            lm,
            vec,
            items,
            layers=lay,
            multipliers=mults,
            kinds=kinds,  # type: ignore[arg-type]
            positions=win,
            neutral=neutral,
            side_layers=side_layers,
            prompts=texts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=bar,
        )
    with writer as run:
        run.manifest["model"] = lm.describe()
        run.manifest["vector"] = {k: v for k, v in vec.header().items() if k != "stats"}
        run.manifest["dataset"] = {"name": ds.name, "hash": ds.hash, "eval_items": len(items)}
        run.table("ab_sweep", ev.ab)
        if not ev.side.empty:
            run.table("side_effects", ev.side)
        run.text(
            "samples.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in ev.samples)
        )
        run.json("summary.json", ev.summary)
        run.text(
            "report.html",
            report(
                ev,
                f"Steering eval: {vec.dataset} on {lm.name}",
                {"vector": str(vector), "items": len(items)},
            ).render(),
        )
    for kind in kinds:
        grid = ev.ab[ev.ab.kind == kind].pivot(index="layer", columns="multiplier", values="score")
        console.print(f"A/B {kind} score", grid.round(3))
    console.print(json.dumps(ev.summary, indent=1, default=str))


@steer_app.command("generate", cls=OutCommand)
def generate_cmd(
    model: str = MODEL,
    prompt: list[str] = PROMPT,
    prompts: str = typer.Option("", help="prompt file or shipped prompt set"),
    vector: str = typer.Option("", "--vector", "-v", help="vector file (none: plain generation)"),
    layers: str = typer.Option("", help="layers of the vector to use (default: all of them)"),
    coef: float = typer.Option(1.0, "--coef", "-c", help="multiplier of the vector"),
    mode: str = typer.Option("add", help="add, ablate, ablate_add, clamp"),
    positions: str = typer.Option(
        "instruction", help="instruction (after the user message), all, gen, prompt, START:STOP"
    ),
    condition: list[str] = CONDITION,
    rule: str = typer.Option("any", help="any or all: how several conditions combine"),
    per_token: bool = typer.Option(False, help="re-evaluate conditions at every token"),
    compare: bool = typer.Option(True, help="also print the unsteered generation"),
    max_new_tokens: int = typer.Option(48),
    sample: bool = typer.Option(False, help="sample instead of greedy decoding"),
    temperature: float = typer.Option(0.7),
    seed: int = typer.Option(0),
    raw: bool = typer.Option(False, help="do not apply the chat template"),
    out: str = out_option("", "write the generations as JSONL", kind="file"),
    any_model: bool = ANY_MODEL,
    dtype: str = DTYPE,
    device: str = DEVICE,
) -> None:
    """Generate with (and without) steering; conditions gate it per prompt."""
    from actscope.interventions.steering import (
        Condition,
        Steering,
        SteeringVector,
        all_of,
        any_of,
        generate,
        instruction_window,
        load_prompts,
        parse_positions,
    )
    from actscope.interventions.steering.extract import resolve_layers
    from actscope.utils.atomic import atomic_write_text

    texts = list(prompt) + (load_prompts(prompts) if prompts else [])
    if not texts:
        raise ActscopeError("give at least one --prompt or --prompts")
    vec = SteeringVector.load(vector) if vector else None
    cond_vecs = [SteeringVector.load(c) for c in condition] if vector else []
    conds = [Condition.from_vector(v) for v in cond_vecs]
    lm = load(model, dtype, device)
    steer = None
    if vec is not None:
        if not any_model:
            for v in (vec, *cond_vecs):
                v.check_model(lm)
        expr = (
            None
            if not conds
            else conds[0]
            if len(conds) == 1
            else (any_of(*conds) if rule == "any" else all_of(*conds))
        )
        win = (
            instruction_window(lm, chat=not raw)
            if positions == "instruction"
            else parse_positions(positions)
        )
        steer = Steering(
            lm,
            vec,
            layers=resolve_layers(lm, layers) if layers else None,
            coef=coef,
            mode=mode,
            positions=win,
            condition=expr,  # type: ignore[arg-type]
            per_token=per_token or None,
        )
    kw = dict(
        chat=not raw,
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature,
        seed=seed,
    )
    with _bar(len(texts) * (2 if compare and steer else 1), "generating") as bar:
        steered, fired = generate(lm, texts, steer, return_decisions=True, progress=bar, **kw)
        plain = generate(lm, texts, None, progress=bar, **kw) if compare and steer else None
    rows = []
    for i, p in enumerate(texts):
        row = {"prompt": p, "steered": steered[i], "condition_fired": fired[i]}
        if plain is not None:
            row["unsteered"] = plain[i]
        rows.append(row)
        console.print(f"[bold]prompt:[/] {p}")
        if plain is not None:
            console.print(f"  [dim]unsteered:[/] {plain[i]}")
        tag = "" if fired[i] is None else f" (condition {'fired' if fired[i] else 'not fired'})"
        console.print(f"  [green]steered{tag}:[/] {steered[i]}")
    if out:
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def register(app: typer.Typer) -> None:
    app.add_typer(steer_app, name="steer")
