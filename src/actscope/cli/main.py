"""The ``actscope`` command line.

Each module of this package that defines ``register(app)`` adds its commands; ``main`` turns
every :class:`~actscope.errors.ActscopeError` (and running out of memory) into a one-line
message on stderr and exit status 2, so bad input never ends in a traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys

import typer

import actscope.cli as cli_pkg
from actscope.errors import ActscopeError

app = typer.Typer(
    name="actscope",
    help="See, measure and change the activations of Hugging Face causal LMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """See, measure and change the activations of Hugging Face causal LMs."""


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda i: i.name):
        if info.name in ("main", "common"):
            continue
        mod = importlib.import_module(f"actscope.cli.{info.name}")
        if hasattr(mod, "register"):
            mod.register(app)


_register_all()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, mapping user errors to one line and exit code 2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # actscope shows its own progress
    try:
        app(args=argv, prog_name="actscope")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ActscopeError as exc:
        print(f"actscope: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("actscope: error: out of memory; lower --batch-size or --seq-len", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower():
            raise
        print(
            "actscope: error: out of memory on the device; lower --batch-size or --seq-len",
            file=sys.stderr,
        )
        return 2
    return 0


def entry() -> None:
    sys.exit(main())
