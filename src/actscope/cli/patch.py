"""``actscope patch``: activation patching and attribution patching of clean/corrupt pairs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from actscope.cli.common import MODEL_HELP, OutCommand, console, load, out_option, token_progress
from actscope.utils import checks

PATCH_OUT = Path("runs/patch")


def register(app: typer.Typer) -> None:
    @app.command("patch", cls=OutCommand)
    def patch_cmd(
        model: str = typer.Option("smollm2-135m", "--model", "-m", help=MODEL_HELP),
        pairs: str = typer.Option(
            "ioi",
            "--pairs",
            "-p",
            help="shipped pair set (ioi) or a .jsonl file with clean/corrupt/answer/wrong",
        ),
        out: Annotated[
            Path, out_option(help="run directory to write")
        ] = PATCH_OUT,
        sites: str = typer.Option(
            "resid_pre",
            "--sites",
            "-s",
            help="site patterns patched per (layer, position); '' for none",
        ),
        heads: bool = typer.Option(
            True, "--heads/--no-heads", help="also patch every attention head (o_in slices)"
        ),
        head_positions: bool = typer.Option(
            False, "--head-positions", help="patch heads per position instead of at all positions"
        ),
        method: str = typer.Option(
            "both", "--method", help="exact, atp (attribution patching) or both"
        ),
        direction: str = typer.Option(
            "denoise", "--direction", help="denoise (clean into corrupt) or noise"
        ),
        limit: int = typer.Option(0, "--limit", "-n", help="use the first N pairs (0 = all)"),
        batch_size: int = typer.Option(64, "--batch-size", help="patched runs per forward pass"),
        dtype: str = typer.Option(
            "fp32", "--dtype", help="fp32 (default: gradients and small differences), bf16, auto"
        ),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """Patch sites by layer x position (and heads); compare AtP with exact patching."""
        from actscope.analyses.explain.pairs import load_pairs, tokenize_pairs
        from actscope.analyses.explain.patching import check_direction
        from actscope.analyses.explain.study_patch import (
            METHODS,
            make_units,
            patch_study,
            summary,
            write_run,
        )
        from actscope.errors import ActscopeError

        if method not in METHODS:
            raise ActscopeError(f"method must be one of {', '.join(METHODS)}, not '{method}'")
        check_direction(direction)
        checks.integer(limit, "--limit", 0)
        checks.integer(batch_size, "--batch-size")
        source = load_pairs(pairs, limit or None)
        t0 = time.perf_counter()
        lm = load(model, dtype, device)
        tps = tokenize_pairs(lm.tokenizer, source)
        units_for = make_units(
            lm, [s for s in sites.split(",") if s.strip()], heads, head_positions
        )
        total = sum(len(units_for(tp)) for tp in tps) * (2 if method == "both" else 1)
        with token_progress(total, "patch") as bar:
            task = bar.add_task("patch units", total=total, rate="")
            st = patch_study(
                lm,
                tps,
                units_for,
                method=method,
                direction=direction,
                batch_size=batch_size,
                progress=lambda n: bar.advance(task, n),
            )
        args = {
            "model": model,
            "pairs": pairs,
            "sites": sites,
            "heads": heads,
            "head_positions": head_positions,
            "method": method,
            "direction": direction,
            "limit": limit,
            "batch_size": batch_size,
            "dtype": dtype,
            "device": device,
        }
        write_run(st, out, args, lm.describe(), time.perf_counter() - t0)
        s = summary(st)
        console.print(
            f"[bold]{lm.name}[/]: {s['n_pairs']} pairs, LD clean {s['mean_ld_clean']:.3f}, "
            f"corrupt {s['mean_ld_corrupt']:.3f}"
        )
        for key in ("top_exact", "top_atp"):
            for r in s.get(key, [])[:3]:
                where = (
                    f"head {r['head']}"
                    if r["head"] >= 0
                    else f"pos {r['pos_from_end']} {r['token']!r}"
                )
                console.print(
                    f"  {key[4:]:5} {r['site']:<14} {where:<24} ld_norm {r['ld_norm']:+.3f}"
                )
        for r in s.get("agreement", []):
            console.print(
                f"  AtP vs exact ({r['level']}) {r['kind']:<10} spearman {r['spearman']:.3f}"
            )
        print(out / "report.html")
