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
from typer import Abort as _Abort
from typer import Exit as _Exit

import actscope.cli as cli_pkg
from actscope.errors import ActscopeError

try:  # newer typer carries its own copy of click, whose errors derive from TyperException
    from typer import TyperException as _UsageError
except ImportError:  # older typer runs on click itself
    from click.exceptions import ClickException as _UsageError  # type: ignore[assignment]

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


def one_line(text: str) -> str:
    """``text`` with its lines joined by spaces (an error must stay on one line)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _fail(message: str) -> int:
    print(f"actscope: error: {one_line(message)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, mapping user errors to one line and exit code 2.

    Usage errors found by the option parser (unknown option, text for a number...) are user
    errors too. Ctrl-C prints ``actscope: interrupted`` and returns 130; run folders are
    written atomically, so an interrupted command leaves nothing half-written.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # actscope shows its own progress
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # the context is run here rather than through ``command.main`` so that Ctrl-C reaches
        # this function (typer would turn it into a silent exit status 130)
        with command.make_context("actscope", args) as ctx:
            rv = command.invoke(ctx)
    except _Exit as exc:  # --help, or a command that ends itself with typer.Exit(code)
        return int(exc.exit_code)
    except _UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as click does
            print(exc.format_message())
            return int(getattr(exc, "exit_code", 2))
        where = getattr(exc, "ctx", None)
        hint = f" (see `{where.command_path} --help`)" if where is not None else ""
        return _fail(f"{exc.format_message()}{hint}")
    except (_Abort, KeyboardInterrupt):
        print("actscope: interrupted", file=sys.stderr)
        return 130
    except ActscopeError as exc:
        return _fail(str(exc))
    except MemoryError:
        return _fail("out of memory; lower --batch-size or --seq-len")
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower():
            raise
        return _fail("out of memory on the device; lower --batch-size or --seq-len")
    return rv if isinstance(rv, int) else 0


def entry() -> None:
    sys.exit(main())
