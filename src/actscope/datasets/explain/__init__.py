"""Example datasets for the explain commands (patch, lens, probe), shipped as JSON Lines.

=====================  =============================================================================
name                   rows
=====================  =============================================================================
``ioi``                24 indirect-object pairs: ``clean``/``corrupt`` prompts of equal length (the
                       corrupt prompt repeats the indirect object instead of the subject),
                       ``answer`` (clean completion), ``wrong`` (corrupt completion), ``template``
``facts``              55 factual-recall prompts: ``prompt``, ``target`` (next token), ``kind``
``cities_truth``       132 statements "The city of X is in Y." with ``label`` true/false (one true
                       and one false per city) and ``key`` (the city, used by the control task)
=====================  =============================================================================

Every name resolves offline; a path to a user's own ``.jsonl`` file is accepted wherever a name is.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from actscope.data.loaders import read_text
from actscope.errors import DataError, suggest

_PACKAGE = "actscope.datasets.explain"


def available() -> list[str]:
    """Names of the shipped datasets (file stems)."""
    root = resources.files(_PACKAGE)
    return sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl"))


def read_jsonl(name_or_path: str | Path) -> list[dict[str, Any]]:
    """Rows of a shipped dataset (by name) or of a ``.jsonl`` file (one JSON object per line)."""
    spec = str(name_or_path)
    if spec in available():
        text = resources.files(_PACKAGE).joinpath(f"{spec}.jsonl").read_text(encoding="utf-8")
        where = f"dataset '{spec}'"
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DataError(
                f"unknown dataset '{spec}': not a shipped name ({', '.join(available())}) "
                f"nor an existing file{suggest(spec, available())}"
            )
        text = read_text(path, "dataset file")
        where = str(path)
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: line {i} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: line {i} is not a JSON object")
        rows.append(row)
    if not rows:
        raise DataError(f"{where} holds no rows")
    return rows


def require(rows: list[dict[str, Any]], fields: tuple[str, ...], where: str) -> None:
    """Raise :class:`DataError` naming the first row that lacks one of ``fields``."""
    for i, row in enumerate(rows, 1):
        missing = [f for f in fields if f not in row]
        if missing:
            raise DataError(f"{where}: row {i} lacks field(s) {', '.join(missing)}")
