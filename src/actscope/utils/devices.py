"""Where a module computes, also when accelerate has dispatched or offloaded it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def execution_device(module: nn.Module) -> torch.device:
    """Device a module computes on: accelerate's execution device, else its first tensor's.

    Tensors on the meta device (weights offloaded to CPU or disk) are skipped; a module with
    neither hook nor materialised tensors reports ``cpu``.
    """
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    for t in (*module.parameters(), *module.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def input_device(lm: Any) -> torch.device:
    """Where input ids must be placed: the execution device of the input embedding."""
    model = getattr(lm, "model", lm)
    return execution_device(model.get_input_embeddings())
