"""Snapshots of folders on disk, to show that a command left the user's files untouched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from actscope.utils.atomic import is_temp_name


def tree_state(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (itself included): relative path -> kind and content hash.

    Files are hashed with SHA-256, links by their target, folders by their mode, so any
    change in names, contents, kinds or permissions shows as a different mapping.
    """
    state: dict[str, str] = {}
    if not os.path.lexists(root):
        return state
    for here, dirs, files in os.walk(root):
        base = Path(here)
        rel = str(base.relative_to(root))
        state[rel] = f"dir {oct(base.stat().st_mode)}"
        for name in files + [d for d in dirs if (base / d).is_symlink()]:
            p = base / name
            key = str(p.relative_to(root))
            if p.is_symlink():
                state[key] = f"link {os.readlink(p)}"
            else:
                state[key] = "file " + hashlib.sha256(p.read_bytes()).hexdigest()
    return state


def temp_entries(root: Path) -> list[str]:
    """Names of actscope temporary entries and lock files anywhere under ``root``."""
    found = []
    for _here, dirs, files in os.walk(root):
        found += [n for n in dirs + files if is_temp_name(n)]
    return sorted(found)


@contextlib.contextmanager
def tmpfs(where: Path, size_kib: int, read_only: bool = False) -> Iterator[Path]:
    """Mount a ``size_kib`` tmpfs at ``where`` for the block; skip the test where we cannot."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size_kib}k" + (",ro" if read_only else "")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
