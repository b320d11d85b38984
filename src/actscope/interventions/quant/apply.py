"""Fake-quantized forward passes: weight/activation schemes such as W8A8, W4A16, W4A8.

:func:`quantized` is a context manager. Inside it, the decoder's Linear layers (q k v o gate up
down, or the family's fused equivalents; the embedding and the LM head stay as they are) run
with fake-quantized weights, and their inputs are fake-quantized by edits on the ``<lin>_in``
sites, on the device, inside the forward pass. Linear layers reading the same tensor (q/k/v,
gate/up) share one quantization of it. With ``act_scales`` and ``alpha`` the SmoothQuant
factors are folded first (:mod:`.smooth`), and weights are quantized after smoothing.

Static per-tensor activation ranges (``act.granularity == "tensor"``) come from
``static[site name]``; with smoothing they are derived exactly from the per-channel maxima:
``max_j(max|X_j| / s_j)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from actscope.capture.trace import Edit, Trace, sitemap_of
from actscope.errors import ActscopeError
from actscope.interventions.quant.fake import Range, fake_quantize
from actscope.interventions.quant.smooth import smoothed
from actscope.interventions.quant.spec import QuantSpec
from actscope.interventions.quant.weights import quantized_weights
from actscope.sites.sitemap import Site


@dataclass(frozen=True)
class Scheme:
    """A weight/activation quantization scheme; ``None`` leaves that side in full precision."""

    name: str
    weight: QuantSpec | None = None
    act: QuantSpec | None = None

    def describe(self) -> str:
        w = self.weight.name if self.weight else "none"
        a = self.act.name if self.act else "none"
        return f"weights {w}, activations {a}"


SCHEMES: dict[str, Scheme] = {
    "fp": Scheme("fp"),
    "W8A8": Scheme("W8A8", QuantSpec("int8", True, "channel"), QuantSpec("int8", True, "token")),
    "W8A8-static": Scheme(
        "W8A8-static", QuantSpec("int8", True, "channel"), QuantSpec("int8", True, "tensor")
    ),
    "W4A16": Scheme("W4A16", QuantSpec("int4", False, "group", group_size=128)),
    "W4A8": Scheme(
        "W4A8", QuantSpec("int4", False, "group", group_size=128), QuantSpec("int8", True, "token")
    ),
}
"""W8A8: INT8 per-output-channel weights, INT8 per-token dynamic activations. W8A8-static:
the same with one calibrated per-tensor activation range per site. W4A16: INT4 asymmetric
round-to-nearest weights in groups of 128 input channels. W4A8: those weights with INT8
per-token activations."""


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise ActscopeError(f"unknown scheme '{name}' (known: {', '.join(SCHEMES)})")
    return SCHEMES[name]


def linear_sites(lm: object) -> list[Site]:
    """The ``<lin>_in`` sites of every decoder layer, in execution order."""
    sm = sitemap_of(lm)
    kinds = {f"{lin}_in" for lin in sm.adapter.linears}
    return [s for s in sm.resolve("all") if s.kind in kinds]


def linear_modules(lm: object) -> dict[str, nn.Module]:
    """``{module name: module}`` of the decoder's Linear layers (embedding and head excluded)."""
    sm = sitemap_of(lm)
    return {s.module: sm.model.get_submodule(s.module) for s in linear_sites(lm)}


@dataclass
class ActivationQuantizer:
    """Edits replacing each Linear input by its fake quantization (in the input's dtype).

    The most recent input and output are remembered, so Linear layers fed the same tensor
    object (q/k/v) reuse one quantization instead of repeating it.
    """

    spec: QuantSpec
    static: Mapping[str, Range] = field(default_factory=dict)
    _last: tuple[Tensor, str, Tensor] | None = None

    def edit_for(self, site: str, key: str) -> Edit:
        static = self.static.get(site)
        if self.spec.granularity == "tensor" and static is None:
            raise ActscopeError(f"per-tensor activation quantization needs a range for '{site}'")

        def edit(value: Tensor, mask: Tensor | None) -> Tensor:
            last = self._last
            if last is not None and last[0] is value and last[1] == key:
                return last[2]
            q, _ = fake_quantize(value, self.spec, static=static, valid=mask)
            out = q.to(value.dtype)
            self._last = (value, key, out)
            return out

        return edit

    def edits(self, sites: list[Site]) -> dict[str, Edit]:
        # sites sharing one tensor also share one range key (their static ranges are equal)
        return {s.name: self.edit_for(s.name, _range_key(self.static.get(s.name))) for s in sites}

    def reset(self) -> None:
        self._last = None


def _range_key(r: Range | None) -> str:
    return "" if r is None else f"{r.lo!r}:{r.hi!r}"


def smoothed_ranges(
    act_scales: Mapping[str, Tensor], factors: Mapping[str, Tensor], sites: list[Site]
) -> dict[str, Range]:
    """Per-tensor ranges of smoothed Linear inputs: ``c = max_j(max|X_j| / s_j)``."""
    out: dict[str, Range] = {}
    for s in sites:
        a = act_scales[s.module].float()
        f = factors.get(s.module)
        c = float((a / f.to(a.device) if f is not None else a).max())
        out[s.name] = Range.symmetric(c)
    return out


@contextlib.contextmanager
def quantized(
    lm: object,
    scheme: Scheme,
    *,
    static: Mapping[str, Range] | None = None,
    act_scales: Mapping[str, Tensor] | None = None,
    alpha: float | None = None,
) -> Iterator[Trace | None]:
    """Run ``lm`` under ``scheme`` (and SmoothQuant with ``alpha``) inside the block.

    ``static`` gives per-tensor activation ranges by site name (needed when the scheme's
    activations are per-tensor and no smoothing is applied); ``act_scales`` (per-channel
    ``max|x|`` by Linear module name) are needed for smoothing and for smoothed ranges.
    """
    sites = linear_sites(lm)
    with contextlib.ExitStack() as stack:
        factors: dict[str, Tensor] = {}
        if alpha is not None:
            if act_scales is None:
                raise ActscopeError("SmoothQuant needs activation scales (per-channel max|x|)")
            factors = stack.enter_context(smoothed(lm, act_scales, alpha))
        if scheme.weight is not None:
            stack.enter_context(quantized_weights(linear_modules(lm), scheme.weight))
        trace: Trace | None = None
        if scheme.act is not None:
            ranges = dict(static or {})
            if scheme.act.granularity == "tensor" and (alpha is not None or not ranges):
                if act_scales is None:
                    raise ActscopeError("per-tensor activation ranges need calibration scales")
                ranges = smoothed_ranges(act_scales, factors, sites)
            quant = ActivationQuantizer(scheme.act, ranges)
            trace = stack.enter_context(Trace(lm, edits=quant.edits(sites)))
        yield trace
