"""actscope: see, measure and change the activations of Hugging Face causal LMs."""

from actscope.errors import ActscopeError

__version__ = "0.1.0"

__all__ = ["ActscopeError", "__version__"]
