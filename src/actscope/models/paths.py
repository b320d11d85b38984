"""Where actscope keeps caches: ``$ACTSCOPE_CACHE`` or ``$XDG_CACHE_HOME/actscope`` (~/.cache)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Root of actscope's cache (dense model copies, assembled GGUF files)."""
    env = os.environ.get("ACTSCOPE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "actscope"
