"""The site vocabulary and its mapping onto each model family."""

from actscope.sites.adapters import ADAPTERS, Adapter, Hook, Scale, adapter_for, register
from actscope.sites.sitemap import Site, SiteMap
from actscope.sites.vocabulary import (
    EXPERT_KINDS,
    LAYER_KINDS,
    MIXER_KINDS,
    MODEL_KINDS,
    describe_kind,
)

__all__ = [
    "ADAPTERS",
    "EXPERT_KINDS",
    "LAYER_KINDS",
    "MIXER_KINDS",
    "MODEL_KINDS",
    "Adapter",
    "Hook",
    "Scale",
    "Site",
    "SiteMap",
    "adapter_for",
    "describe_kind",
    "register",
]
