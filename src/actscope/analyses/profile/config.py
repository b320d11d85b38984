"""Options of a profile run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from actscope.stats import StatsOptions


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
