"""``actscope ablate``: remove massive activations / outlier channels found by a profile run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from actscope.cli.common import OutCommand, StageBars, console, load, out_option
from actscope.utils import checks

ABLATE_OUT = Path("runs/ablate")


def register(app: typer.Typer) -> None:
    @app.command("ablate", cls=OutCommand)
    def ablate_cmd(
        profile: Annotated[Path, typer.Option("--profile", "-p", help="profile run directory")],
        model: str = typer.Option("smollm2-135m", "--model", "-m", help="the profiled model"),
        corpus: str = typer.Option("default", "--corpus", "-c", help="corpus to evaluate on"),
        out: Annotated[Path, out_option(help="run directory")] = ABLATE_OUT,
        modes: str = typer.Option("zero,mean", "--modes", help="zero and/or mean"),
        topk: str = typer.Option("1,2,4", "--topk", help="numbers of top channels to remove"),
        random_control: bool = typer.Option(True, "--random-control/--no-random-control"),
        layers: str = typer.Option("first", "--layers", help="massive edits: first site or all"),
        median: str = typer.Option(
            "auto", "--median", help="criterion median: auto (as the profile), token or layer"
        ),
        calib_tokens: int = typer.Option(4096, "--calib-tokens"),
        eval_tokens: int = typer.Option(16384, "--eval-tokens"),
        seq_len: int = typer.Option(256, "--seq-len"),
        batch_size: int = typer.Option(8, "--batch-size"),
        split: float = typer.Option(0.5, "--split", help="corpus fraction for calibration"),
        seed: int = typer.Option(0, "--seed"),
        dtype: str = typer.Option("auto", "--dtype"),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """Zero / mean-replace massive activations or top-k outlier channels; report perplexity."""
        from actscope.analyses.ablate import AblationConfig, detect_targets, run_ablation
        from actscope.data import load_corpus

        cfg = AblationConfig(
            modes=[m.strip() for m in modes.split(",") if m.strip()],
            topk=checks.parse_list(topk, "--topk", int),
            random_control=random_control,
            layers=layers,
            median=median,
            calib_tokens=calib_tokens,
            eval_tokens=eval_tokens,
            seq_len=seq_len,
            batch_size=batch_size,
            split=split,
            seed=seed,
        )
        targets = detect_targets(profile)
        texts = load_corpus(corpus)
        lm = load(model, dtype, device)
        with StageBars() as bars:
            res = run_ablation(lm, profile, out, texts, cfg, progress=bars)
        where = "; ".join(f"{c} at {s}" for s, c in targets.sites.items()) or "none found"
        console.print(f"[bold]{res.model}[/]: massive channels {where}")
        for r in res.table.itertuples():
            console.print(
                f"  {r.intervention:<16} ppl {r.perplexity:12.4f}  x{r.ratio:8.3f}  "
                f"({r.entries_changed} entries changed)"
            )
        print(out / "report.html")
