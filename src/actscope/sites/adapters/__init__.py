"""Declarative family adapters (see :mod:`.base` for the format) and their registry.

One small table per family, grouped by layout: :mod:`.dense`, :mod:`.moe`, :mod:`.hybrid`.
Outside code can add families with :func:`register`.
"""

from __future__ import annotations

from actscope.sites.adapters.base import Adapter, Hook, Port, Scale
from actscope.sites.adapters.dense import DENSE
from actscope.sites.adapters.hybrid import HYBRID
from actscope.sites.adapters.moe import MOE

ADAPTERS: list[Adapter] = [*DENSE, *MOE, *HYBRID]

_REGISTRY: dict[str, Adapter] = {}


def register(adapter: Adapter) -> None:
    """Register (or replace) the adapter of each family in ``adapter.families``."""
    for fam in adapter.families:
        _REGISTRY[fam] = adapter


for _a in ADAPTERS:
    register(_a)


def adapter_for(model_type: str) -> Adapter | None:
    """The registered adapter of ``model_type``, or None (then discovery is tried)."""
    return _REGISTRY.get(model_type)


def registered_families() -> list[str]:
    return sorted(_REGISTRY)


__all__ = [
    "ADAPTERS",
    "Adapter",
    "Hook",
    "Port",
    "Scale",
    "adapter_for",
    "register",
    "registered_families",
]
