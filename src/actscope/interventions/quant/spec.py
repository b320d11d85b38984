"""What a fake quantizer does, as a small immutable value: format, symmetry, granularity, clip.

A :class:`QuantSpec` is written ``<format>-<sym|asym>-<granularity>-<clip>``, e.g.
``int8-sym-tensor-max``, ``int4-asym-group128-p99.9`` or ``fp8-sym-token-mse``:

* format: ``intN`` (N = 2..8, two's-complement integer grid) or ``fp8`` (E4M3, max 448);
* ``sym`` / ``asym``: a grid centred on 0, or a grid with a zero point (integers only);
* granularity: what one scale covers. ``tensor`` = the whole tensor (static: the range comes
  from calibration), ``token`` = one row (dynamic), ``channel`` = one input channel over the
  tokens of the batch (an analysis bound: a per-channel activation scale cannot be factored
  out of the GEMM), ``groupG`` = G consecutive input channels of one token (default 128; when
  G does not divide the width, the last group holds the remainder);
* clip: the range a scale covers. ``max`` = the largest |x| (or min/max), ``pP`` = the exact
  P-th percentile of |x| (of x and its (100-P)-th percentile for ``asym``), ``mse`` = ``r``
  times the max, with ``r`` chosen on calibration data to minimise the output MSE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from actscope.errors import ActscopeError

FP8_MAX = 448.0
"""Largest finite value of float8 E4M3 (``torch.float8_e4m3fn``)."""
HAS_FP8 = hasattr(torch, "float8_e4m3fn")
"""Whether this torch build has the float8 E4M3 dtype (torch >= 2.1)."""

GRANULARITIES = ("tensor", "token", "channel", "group")
_SPEC = re.compile(
    r"^(?P<fmt>int[2-8]|fp8)-(?P<sym>sym|asym)-(?P<gran>tensor|token|channel|group(?P<g>\d+)?)"
    r"-(?P<clip>max|mse|p\d+(?:\.\d+)?)$"
)


class QuantSpecError(ActscopeError):
    """A quantizer description that cannot be parsed or makes no sense."""


@dataclass(frozen=True)
class QuantSpec:
    """One fake quantizer (see the module docstring for the meaning of each field).

    ``clip`` is ``"max"``, ``"mse"`` or a percentile string such as ``"p99.9"``.
    """

    fmt: str = "int8"
    symmetric: bool = True
    granularity: str = "token"
    clip: str = "max"
    group_size: int = 128

    def __post_init__(self) -> None:
        if self.fmt != "fp8" and not re.fullmatch(r"int[2-8]", self.fmt):
            raise QuantSpecError(f"unknown format '{self.fmt}': use int2..int8 or fp8")
        if self.fmt == "fp8" and not self.symmetric:
            raise QuantSpecError("fp8 has no zero point: use fp8-sym-...")
        if self.fmt == "fp8" and not HAS_FP8:
            raise QuantSpecError(f"fp8 needs torch.float8_e4m3fn (torch {torch.__version__})")
        if self.granularity not in GRANULARITIES:
            raise QuantSpecError(
                f"unknown granularity '{self.granularity}': use {', '.join(GRANULARITIES)}"
            )
        if self.group_size < 1:
            raise QuantSpecError(f"group size must be >= 1, got {self.group_size}")
        if self.clip not in ("max", "mse"):
            p = self.percentile
            if not 0.0 < p <= 1.0:
                raise QuantSpecError(f"clip percentile must lie in (0, 100], got {self.clip}")

    # derived ----------------------------------------------------------------------------------
    @property
    def is_float(self) -> bool:
        return self.fmt == "fp8"

    @property
    def bits(self) -> int:
        return 8 if self.fmt == "fp8" else int(self.fmt[3:])

    @property
    def qmax(self) -> int:
        """Largest positive code of the symmetric integer grid, ``2^(b-1) - 1``."""
        return 2 ** (self.bits - 1) - 1

    @property
    def levels(self) -> int:
        """Largest code of the asymmetric grid, ``2^b - 1``."""
        return 2**self.bits - 1

    @property
    def percentile(self) -> float:
        """The clip quantile as a fraction (``p99.9`` -> 0.999); 1.0 for ``max``/``mse``."""
        if self.clip in ("max", "mse"):
            return 1.0
        try:
            return float(self.clip[1:]) / 100.0
        except ValueError:
            raise QuantSpecError(f"bad clip '{self.clip}': use max, mse or pNN.N") from None

    @property
    def name(self) -> str:
        gran = f"group{self.group_size}" if self.granularity == "group" else self.granularity
        return f"{self.fmt}-{'sym' if self.symmetric else 'asym'}-{gran}-{self.clip}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str) -> QuantSpec:
        """Parse ``int8-sym-token-max`` style names (see the module docstring)."""
        m = _SPEC.match(text.strip().lower())
        if not m:
            raise QuantSpecError(
                f"cannot parse quantizer '{text}': expected FORMAT-SYM-GRANULARITY-CLIP, "
                "e.g. int8-sym-tensor-max, int4-asym-group128-p99.9, fp8-sym-token-mse"
            )
        gran = m.group("gran")
        group = int(m.group("g")) if m.group("g") else 128
        return cls(
            fmt=m.group("fmt"),
            symmetric=m.group("sym") == "sym",
            granularity="group" if gran.startswith("group") else gran,
            clip=m.group("clip"),
            group_size=group,
        )


def parse_specs(texts: str | list[str]) -> list[QuantSpec]:
    """Parse a comma-separated string (or list) of spec names, keeping order, no repeats."""
    items = texts.split(",") if isinstance(texts, str) else list(texts)
    out: dict[str, QuantSpec] = {}
    for t in items:
        if t.strip():
            spec = QuantSpec.parse(t)
            out.setdefault(spec.name, spec)
    return list(out.values())


def grid(
    formats: list[str],
    symmetric: list[bool],
    granularities: list[str],
    clips: list[str],
    group_size: int = 128,
) -> list[QuantSpec]:
    """The cartesian product of the options (fp8 combinations without a zero point only)."""
    out: list[QuantSpec] = []
    for f in formats:
        for sym in symmetric:
            if f == "fp8" and not sym:
                continue
            for g in granularities:
                for c in clips:
                    out.append(QuantSpec(f, sym, g, c, group_size))
    return out


def default_grid() -> list[QuantSpec]:
    """The sweep ``actscope quant`` runs by default (36 quantizers).

    Every format (int8, int4, fp8 when torch has it) x symmetry x granularity at ``max``
    clipping (20), plus the clipping study: int8/int4 symmetric, per-tensor and per-token,
    at p99, p99.9, p99.99 and MSE-searched clipping (16).
    """
    formats = ["int8", "int4", "fp8"] if HAS_FP8 else ["int8", "int4"]
    specs = grid(formats, [True, False], list(GRANULARITIES), ["max"])
    specs += grid(["int8", "int4"], [True], ["tensor", "token"], ["p99", "p99.9", "p99.99", "mse"])
    return specs


def fast_grid() -> list[QuantSpec]:
    """INT8/INT4 symmetric x the four granularities at ``max`` clipping (8 quantizers)."""
    return grid(["int8", "int4"], [True], list(GRANULARITIES), ["max"])


GRIDS = {"default": default_grid, "fast": fast_grid}
