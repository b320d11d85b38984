"""Outlier interventions: overwrite massive activations or whole channels of the residual stream.

Two edits, both plain ``fn(value, mask)`` edits for :class:`~actscope.capture.Trace`:

* :func:`massive_entries`: in the given channels, the entries that meet Sun et al.'s
  criterion *in this forward pass* (``|a| > abs_threshold`` and ``|a| >= ratio * median``,
  the median of ``|a|`` over the token's row (``median="token"``, lower median) or over every
  real entry of the tensor (``"layer"``)) are set to 0 or to a given value per channel (the
  mean of the massive values seen in a profile). Other entries are untouched.
* :func:`channel_values`: the given channels are set to 0 or to a value per channel for every
  token.

Each edit counts the entries it changed (real tokens only) into a device tensor, so a run can
report how much it touched without synchronising inside the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from actscope.capture.trace import Edit


@dataclass
class EditCounter:
    """Entries changed by an edit, summed on the device (read with :meth:`value`)."""

    total: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))

    def add(self, n: Tensor) -> None:
        if self.total.device != n.device:
            self.total = self.total.to(n.device)
        self.total += n

    def value(self) -> int:
        return int(self.total)


def _on(cache: dict[torch.device, Tensor], device: torch.device) -> Tensor:
    """The channel index tensor on ``device``, copied there once."""
    if device not in cache:
        cache[device] = next(iter(cache.values())).to(device)
    return cache[device]


def _replacement(sub: Tensor, values: Tensor | None) -> Tensor:
    if values is None:
        return torch.zeros((), dtype=sub.dtype, device=sub.device)
    return values.to(device=sub.device, dtype=sub.dtype)


def massive_entries(
    channels: list[int],
    values: Tensor | None = None,
    *,
    abs_threshold: float = 100.0,
    ratio: float = 1000.0,
    median: str = "token",
    counter: EditCounter | None = None,
) -> Edit:
    """Edit setting the massive entries of ``channels`` to 0 (``values=None``) or ``values``."""
    if median not in ("token", "layer"):
        raise ValueError(f"median must be 'token' or 'layer', got {median!r}")
    idx = {torch.device("cpu"): torch.tensor(channels, dtype=torch.long)}

    def edit(x: Tensor, mask: Tensor | None) -> Tensor:
        ch = _on(idx, x.device)
        a = x.detach().abs().float()
        if median == "token":
            med = a.median(dim=-1, keepdim=True).values
        else:
            real = a if mask is None else torch.where(mask[..., None], a, float("nan"))
            med = real.nanmedian()
        sub = x.index_select(-1, ch)
        sub_abs = a.index_select(-1, ch)
        hit = (sub_abs > abs_threshold) & (sub_abs >= ratio * med)
        if mask is not None:
            hit &= mask[..., None].bool()
        out = x.clone()
        out.index_copy_(-1, ch, torch.where(hit, _replacement(sub, values), sub))
        if counter is not None:
            counter.add(hit.sum())
        return out

    return edit


def channel_values(
    channels: list[int], values: Tensor | None = None, *, counter: EditCounter | None = None
) -> Edit:
    """Edit setting ``channels`` of every token to 0 (``values=None``) or to ``values``."""
    idx = {torch.device("cpu"): torch.tensor(channels, dtype=torch.long)}

    def edit(x: Tensor, mask: Tensor | None) -> Tensor:
        ch = _on(idx, x.device)
        out = x.clone()
        shape = (*x.shape[:-1], len(channels))
        out.index_copy_(-1, ch, _replacement(x, values).expand(shape).contiguous())
        if counter is not None:
            n = x.shape[:-1].numel() if mask is None else mask.sum()
            counter.add(torch.as_tensor(n, device=x.device) * len(channels))
        return out

    return edit
