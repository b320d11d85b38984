"""Temporary module replacement: the originals come back, also after an error."""

from __future__ import annotations

import pytest
from tests._models import get_model
from torch import nn

from actscope.errors import ActscopeError
from actscope.kernels import swapped_modules


def test_modules_are_restored_after_the_block_and_after_errors() -> None:
    lm = get_model("tiny:llama")
    path = "model.layers.0.mlp.down_proj"
    original = lm.model.get_submodule(path)
    stand_in = nn.Identity()
    with swapped_modules(lm.model, {path: stand_in}):
        assert lm.model.get_submodule(path) is stand_in
    assert lm.model.get_submodule(path) is original
    with pytest.raises(RuntimeError, match="boom"), swapped_modules(lm.model, {path: stand_in}):
        raise RuntimeError("boom")
    assert lm.model.get_submodule(path) is original


def test_unknown_path_raises_and_leaves_the_model_alone() -> None:
    lm = get_model("tiny:llama")
    path = "model.layers.0.mlp.up_proj"
    original = lm.model.get_submodule(path)
    swaps = {path: nn.Identity(), "model.layers.0.mlp.nope": nn.Identity()}
    with pytest.raises(ActscopeError, match="no module"), swapped_modules(lm.model, swaps):
        pytest.fail("the swap should have failed before the block ran")
    assert lm.model.get_submodule(path) is original
