"""The thresholds file written by ``sparsity calibrate`` and read by the apply step.

One JSON document (``thresholds.json``)::

    {"format": 1,
     "model": {"name", "family", "file_hash", "n_layers", "dtype"},
     "calibration": {"corpus", "corpus_hash", "tokens", "seed", "fraction", ...},
     "chess_up_sq": {"<layer>": [E[u_i^2] for every MLP channel i], ...},
     "plans": [{"rule", "allocation", "target", "expected_weight_sparsity",
                "levels": {site: s}, "thresholds": {site: t}}, ...]}

A plan is one (rule, allocation, target): for every unit (named by the site it edits) the
sparsity level ``s`` it was calibrated to and the threshold ``t`` on its score (an entry is kept
when ``score > t``). ``expected_weight_sparsity`` is the parameter-weighted skipped fraction of
all Linear weights of the decoder blocks implied by the levels (see
:mod:`actscope.interventions.sparsify_rules`). The file is written atomically.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from actscope.errors import ActscopeError, DataError
from actscope.utils.atomic import atomic_write_text

FORMAT = 1
ALLOCATIONS: tuple[str, ...] = ("uniform", "greedy")


@dataclass
class SparsityPlan:
    """Thresholds of one rule, allocation and target sparsity."""

    rule: str
    allocation: str
    target: float
    levels: dict[str, float]
    thresholds: dict[str, float]
    expected_weight_sparsity: float = float("nan")

    def key(self) -> tuple[str, str, float]:
        return (self.rule, self.allocation, round(self.target, 6))


@dataclass
class SparsityCalibration:
    """Everything the apply step needs: plans, CHESS statistics and provenance."""

    model: dict[str, Any]
    calibration: dict[str, Any]
    plans: list[SparsityPlan] = field(default_factory=list)
    chess_up_sq: dict[int, list[float]] = field(default_factory=dict)
    format: int = FORMAT

    # queries ------------------------------------------------------------------------------
    def plan(self, rule: str, target: float, allocation: str = "uniform") -> SparsityPlan:
        """The plan for ``(rule, allocation, target)``; a clear error lists what exists."""
        for p in self.plans:
            if p.key() == (rule, allocation, round(target, 6)):
                return p
        have = ", ".join(f"{r}/{a}@{t:g}" for r, a, t in sorted({p.key() for p in self.plans}))
        raise ActscopeError(
            f"no {rule}/{allocation} plan at target {target:g} in the thresholds file "
            f"(it has: {have or 'none'})"
        )

    def chess_tensors(self) -> dict[int, Tensor]:
        """``E[u^2]`` per layer as float32 tensors."""
        return {int(k): torch.tensor(v, dtype=torch.float32) for k, v in self.chess_up_sq.items()}

    def check_model(self, name: str, n_layers: int, file_hash: str | None) -> None:
        """Refuse a file calibrated on another model (layer count or weights hash differ)."""
        if int(self.model.get("n_layers", n_layers)) != n_layers:
            raise ActscopeError(
                f"thresholds were calibrated on {self.model.get('name')} "
                f"({self.model.get('n_layers')} layers), not on {name} ({n_layers} layers)"
            )
        theirs = self.model.get("file_hash")
        if theirs and file_hash and theirs != file_hash:
            raise ActscopeError(
                f"thresholds were calibrated on {self.model.get('name')} with other weights "
                f"(hash {str(theirs)[:12]} != {file_hash[:12]})"
            )

    # file ---------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "model": self.model,
            "calibration": self.calibration,
            "chess_up_sq": {str(k): v for k, v in sorted(self.chess_up_sq.items())},
            "plans": [_plan_json(p) for p in self.plans],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the file atomically (temporary file, then rename)."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SparsityCalibration:
        """Read a thresholds file; a missing or malformed file raises :class:`DataError`."""
        p = Path(path)
        if p.is_dir():
            p = p / "thresholds.json"
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"thresholds file {p} does not exist") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read thresholds file {p}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise DataError(f"{p} is not an actscope thresholds file (format {FORMAT})")
        try:
            plans = [SparsityPlan(**_plan_fields(d)) for d in doc["plans"]]
            chess = {int(k): [float(x) for x in v] for k, v in doc.get("chess_up_sq", {}).items()}
            return cls(doc["model"], doc.get("calibration", {}), plans, chess)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed thresholds file {p}: {exc}") from None


def _plan_json(p: SparsityPlan) -> dict[str, Any]:
    d = asdict(p)
    ews = d["expected_weight_sparsity"]
    d["expected_weight_sparsity"] = None if ews is None or math.isnan(ews) else ews
    return d


def _plan_fields(d: dict[str, Any]) -> dict[str, Any]:
    ews = d.get("expected_weight_sparsity")
    return {
        "rule": str(d["rule"]),
        "allocation": str(d["allocation"]),
        "target": float(d["target"]),
        "levels": {str(k): float(v) for k, v in d["levels"].items()},
        "thresholds": {str(k): float(v) for k, v in d["thresholds"].items()},
        "expected_weight_sparsity": float("nan") if ews is None else float(ews),
    }
