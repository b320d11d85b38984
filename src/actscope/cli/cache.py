"""``actscope cache``: write activations of chosen sites to a sharded store on disk.

    actscope cache smollm2-135m --sites resid_post.6,mlp_out --max-tokens 200000 --out acts/
    actscope cache-verify acts/

Interrupted runs are resumed by running the same command again (``--restart`` discards them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer

from actscope.cli.common import OutCommand, console, load, out_option, token_progress

if TYPE_CHECKING:
    from actscope.data.batching import BosPolicy


def register(app: typer.Typer) -> None:
    @app.command("cache", cls=OutCommand)
    def cache_cmd(
        model: str = typer.Argument(
            ..., help="embedded name, path, GGUF file, hub id or tiny:FAMILY"
        ),
        sites: str = typer.Option(
            ..., "--sites", "-s", help="site names, kinds or globs (comma-separated)"
        ),
        out: str = out_option(..., "store folder to write", kind="store"),
        corpus: str = typer.Option("default", help="'default' or a corpus file/folder"),
        max_tokens: int | None = typer.Option(None, help="stop after this many real tokens"),
        seq_len: int = typer.Option(256, help="tokens per chunk"),
        bos: str = typer.Option("auto", help="BOS policy: auto, always, never"),
        batch_size: int = typer.Option(8, help="chunks per forward pass"),
        seed: int = typer.Option(0, help="seed of the corpus order"),
        store_dtype: str = typer.Option(
            "auto", help="stored dtype: auto (= model dtype), float32, float16, bfloat16"
        ),
        shard_mb: float = typer.Option(256.0, help="target shard size in MiB"),
        dtype: str = typer.Option("auto", help="model dtype: auto (bf16), bf16, fp16, fp32"),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
        device_map: str | None = typer.Option(
            None, help="'auto': spread a model larger than one GPU with accelerate"
        ),
        restart: bool = typer.Option(
            False, help="discard an interrupted build instead of resuming"
        ),
        overwrite: bool = typer.Option(False, help="replace an existing store of other settings"),
    ) -> None:
        """Stream SITES of MODEL over a corpus into safetensors shards with a manifest."""
        from actscope.data import load_corpus
        from actscope.store import StorePlan, build_store

        texts = load_corpus(corpus)
        if device_map:
            from actscope.distributed import load_dispatched

            with console.status(f"loading {model} over devices ({device_map}) ..."):
                lm = load_dispatched(model, dtype=dtype, device_map=device_map)
        else:
            lm = load(model, dtype, device)
        lm.check_seq_len(seq_len)
        bar = token_progress(None, "cache")
        task = bar.add_task("cache", total=None, rate="")

        def on_plan(plan: StorePlan, needed: int) -> None:
            console.print(
                f"caching {len(plan.sites)} site(s) x {plan.n_tokens} tokens as {plan.dtype} "
                f"in {len(plan.shards)} shard(s): about {plan.estimated_bytes / 2**20:.1f} MiB "
                f"({needed / 2**20:.1f} MiB still to write)"
            )
            bar.update(task, total=plan.n_tokens)
            bar.start()

        def advance(n: int) -> None:
            done = bar.tasks[0].completed + n
            elapsed = bar.tasks[0].elapsed or 0.0
            rate = f"{done / elapsed:,.0f} tok/s" if elapsed > 0 else ""
            bar.update(task, advance=n, rate=rate)

        try:
            path = build_store(
                lm,
                texts,
                [p for p in sites.split(",") if p],
                Path(out),
                dtype=store_dtype,
                seq_len=seq_len,
                bos=cast("BosPolicy", bos),
                max_tokens=max_tokens,
                seed=seed,
                batch_size=batch_size,
                shard_mb=shard_mb,
                resume=not restart,
                overwrite=overwrite,
                on_plan=on_plan,
                progress=advance,
            )
        finally:
            bar.stop()
        _summary(path)

    @app.command("cache-verify")
    def cache_verify_cmd(
        store: str = typer.Argument(..., help="store folder written by `actscope cache`"),
    ) -> None:
        """Check every shard of STORE against the SHA-256 sums of its manifest."""
        from actscope.store import ActivationStore

        s = ActivationStore(store, verify=True)
        checked = s.verify()
        typer.echo(f"ok: {s.n_shards} shard(s), {len(s)} tokens, {checked} bytes verified")


def _summary(path: Path) -> None:
    from actscope.store import ActivationStore

    s = ActivationStore(path, verify=False)
    m = s.manifest
    rate = m["last_session"]["tokens_per_s"]
    typer.echo(
        f"wrote {path}: {len(s)} tokens, {s.n_shards} shard(s), {m['bytes'] / 2**20:.1f} MiB, "
        f"sites {', '.join(s.sites)} ({m['dtype']})" + (f", {rate:.0f} tokens/s" if rate else "")
    )
