"""Reading run directories back: a readable manifest of the expected command, JSON files.

Commands that take another command's run as input (``compare`` and ``ablate`` take profile
runs, ``covary`` quant runs) refuse, in one line, a path that does not exist, a folder that is
not an actscope run, an unreadable manifest and the run of another command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from actscope.data import read_text
from actscope.errors import DataError


def read_json(path: Path, what: str) -> Any:
    """The JSON document in ``path``; :class:`DataError` naming ``what`` when it is missing,
    not UTF-8 or not valid JSON."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DataError(f"{what} {path} is not valid JSON ({exc})") from exc


def read_manifest(path: str | Path, command: str) -> dict[str, Any]:
    """The manifest of the ``command`` run directory ``path``.

    Refuses a path that does not exist, a folder without ``manifest.json`` (not an actscope
    run), an unreadable manifest, and the run of another command (a steering run given where
    a profile is expected).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{command} run {p} not found")
    if not p.is_dir() or not (p / "manifest.json").is_file():
        raise DataError(f"{p} is not an actscope run directory (no manifest.json)")
    manifest = read_json(p / "manifest.json", "run manifest")
    if not isinstance(manifest, dict):
        raise DataError(f"run manifest {p / 'manifest.json'} is not a JSON object")
    if manifest.get("command") != command:
        raise DataError(
            f"{p} is not a {command} run (its manifest says command "
            f"{manifest.get('command')!r})"
        )
    return manifest
