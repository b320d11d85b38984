"""Model loading: embedded defaults, local folders, GGUF files and cached hub ids."""

from actscope.models.embedded import EMBEDDED, embedded_gguf
from actscope.models.loading import LoadedModel, load_model, resolve_device, resolve_dtype

__all__ = [
    "EMBEDDED",
    "LoadedModel",
    "embedded_gguf",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]
