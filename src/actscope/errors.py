"""Errors raised by actscope for bad input.

Every error a user can cause derives from :class:`ActscopeError`; the CLI prints its message
on one line and exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ActscopeError(Exception):
    """Base class of the errors caused by bad input (one-line message, non-zero exit)."""


class ModelNotFoundError(ActscopeError):
    """The model name, path or hub id does not resolve to loadable weights."""


class ModelLoadError(ActscopeError):
    """The weights were found but could not be read (corrupt GGUF, bad config...)."""


class UnknownSiteError(ActscopeError):
    """A site name that is not in the model's site vocabulary."""


class LayerOutOfRangeError(ActscopeError):
    """A layer index outside ``[0, n_layers)``."""


class UnsupportedFamilyError(ActscopeError):
    """No adapter matches the model and discovery could not map its modules."""


class DataError(ActscopeError):
    """A corpus or dataset that is missing, empty or malformed."""


class NonFiniteError(ActscopeError):
    """NaN or Inf values where the computation cannot proceed."""


class ResourceError(ActscopeError):
    """Not enough memory or disk for the requested work."""


class OutputError(ActscopeError):
    """An output location that cannot be written, or whose contents must not be replaced."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean: a, b?)"`` with the closest matches of ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""
