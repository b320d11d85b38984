"""Model cache shared by the tests: each model is loaded once per session."""

from __future__ import annotations

from actscope.models import LoadedModel, load_model
from actscope.models.tiny import CONFIGS

TINY_FAMILIES = sorted(CONFIGS)
REAL_MODELS = ["smollm2-135m", "gemma3-270m"]

_cache: dict[tuple[str, str], LoadedModel] = {}


def get_model(spec: str, dtype: str = "fp32") -> LoadedModel:
    """Load ``spec`` once per test session (real models take ~1 s from the dense cache)."""
    key = (spec, dtype)
    if key not in _cache:
        _cache[key] = load_model(spec, dtype=dtype, device="cpu")
    return _cache[key]
