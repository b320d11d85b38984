"""Temporarily put other modules in place of some of a model's submodules.

A sparse decode path must skip the work of a Linear layer, which a forward hook cannot do (the
module still runs its dense product). :func:`swapped_modules` replaces the modules at the given
dotted paths for the duration of a ``with`` block and puts the very same original objects back
in ``finally``, even when the block raises. The model's code is not patched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from torch import nn

from actscope.errors import ActscopeError


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    head, _, attr = path.rpartition(".")
    try:
        parent = model.get_submodule(head) if head else model
    except AttributeError:
        raise ActscopeError(f"no module '{head}' in the model") from None
    if not hasattr(parent, attr):
        raise ActscopeError(f"no module '{path}' in the model")
    return parent, attr


@contextlib.contextmanager
def swapped_modules(model: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[None]:
    """Replace ``model.<path>`` by ``replacements[path]`` inside the block; restore after."""
    originals: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for path, new in replacements.items():
            parent, attr = _parent(model, path)
            originals.append((parent, attr, getattr(parent, attr)))
            setattr(parent, attr, new)
        yield
    finally:
        for parent, attr, old in reversed(originals):
            setattr(parent, attr, old)
