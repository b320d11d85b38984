"""Options of a profile run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from actscope.data.batching import BOS_POLICIES
from actscope.errors import ActscopeError
from actscope.stats import StatsOptions
from actscope.utils import checks


@dataclass
class ProfileConfig:
    """Everything that determines a profile's numbers (recorded in the manifest).

    ``sites`` are patterns (see :meth:`actscope.sites.SiteMap.resolve`); ``max_tokens`` caps
    the real tokens read from the corpus (the domain mix is kept); ``bos`` is the BOS policy
    (``auto`` = what the tokenizer does for ordinary text, ``always``, ``never``).
    """

    sites: list[str] = field(default_factory=lambda: ["all"])
    max_tokens: int | None = 100_000
    seq_len: int = 256
    batch_size: int = 8
    bos: str = "auto"
    padding_side: str = "right"
    seed: int = 0
    top_k: int = 32
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999, 0.9999)
    near_zero_eps: float = 2.0**-10
    massive_abs: float = 100.0
    massive_ratio: float = 1000.0
    view_layer: int | None = None

    def __post_init__(self) -> None:
        """Check every option's type and range (a sweep file sets them from YAML)."""
        self.sites = checks.strings(self.sites, "sites")
        if self.max_tokens is not None:
            self.max_tokens = checks.integer(self.max_tokens, "max_tokens")
        self.bos = checks.one_of(self.bos, "bos", BOS_POLICIES)
        self.seq_len = checks.integer(self.seq_len, "seq_len", 2 if self.bos == "always" else 1)
        self.batch_size = checks.integer(self.batch_size, "batch_size")
        self.padding_side = checks.one_of(self.padding_side, "padding_side", ("left", "right"))
        self.seed = checks.integer(self.seed, "seed", None)
        self.top_k = checks.integer(self.top_k, "top_k")
        if not isinstance(self.quantiles, (list, tuple)) or not self.quantiles:
            raise ActscopeError(f"quantiles must be a list of numbers, got {self.quantiles}")
        self.quantiles = tuple(
            checks.number(q, "quantiles", 0.0, 1.0, low_open=True, high_open=True)
            for q in self.quantiles
        )
        self.near_zero_eps = checks.number(self.near_zero_eps, "near_zero_eps", 0.0, low_open=True)
        self.massive_abs = checks.number(self.massive_abs, "massive_abs", 0.0, low_open=True)
        self.massive_ratio = checks.number(self.massive_ratio, "massive_ratio", 0.0, low_open=True)
        if self.view_layer is not None:
            self.view_layer = checks.integer(self.view_layer, "view_layer", 0)

    def stats_options(self) -> StatsOptions:
        return StatsOptions(
            top_k=self.top_k,
            quantiles=tuple(self.quantiles),
            near_zero_eps=self.near_zero_eps,
            massive_abs=self.massive_abs,
            massive_ratio=self.massive_ratio,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
