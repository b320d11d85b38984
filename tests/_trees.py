"""Snapshots of folders on disk, to show that a command left the user's files untouched."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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
    for here, dirs, files in os.walk(root):
        found += [n for n in dirs + files if is_temp_name(n)]
    return sorted(found)
