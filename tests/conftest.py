"""Shared fixtures: tiny random models of every family, and the real embedded models (slow)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from actscope.models import LoadedModel
from tests._models import get_model


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    return get_model("smollm2-135m", "bf16")


@pytest.fixture(scope="session")
def gemma3() -> LoadedModel:
    return get_model("gemma3-270m", "bf16")
