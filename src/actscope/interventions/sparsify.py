"""Activation sparsification as an intervention on the Linear-input sites (``*_in``).

:class:`Sparsifier` attaches one edit hook per unit of a rule (see
:mod:`actscope.interventions.sparsify_rules`) through :func:`actscope.capture.attach` and owns
its handles. For every token it sparsifies, a unit keeps the entries whose score passes the
calibrated threshold (``score > t``) or, in exact top-k mode, the ``d - round(s d)`` largest
scores of the token, and replaces the others by exact zeros. CHESS's MLP unit decides its mask
from the gate pre-activation (an observer on ``mlp_gate.L``) and applies it to ``down_in.L``.

This is masked-dense emulation: the Linear still reads all its weights, so it measures quality,
never speed. :meth:`Sparsifier.decode_modules` builds the stand-ins of
:mod:`actscope.kernels` that skip the weights of dropped entries, with the same masks.

**Prefill fraction.** In a forward pass over several positions, only the last
``floor(f * n + 1/2)`` real tokens of each row (``n`` real tokens, ``f = prefill_fraction``) are
sparsified; the others stay dense. TEAL's perplexity protocol used ``f = 0.5``, WINA's 0.99,
R-Sparse's 0.1; the default here is ``f = 1`` (every token, as in decoding). Single-position
forward passes (decode steps with a KV cache) are always sparsified.

**Realised sparsity.** Per unit, the fraction of exact zeros in the edited input over the
sparsified real tokens (natural zeros included: a sparse kernel skips them too), accumulated on
the device without host synchronisation and read by :meth:`Sparsifier.realised`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from actscope.capture.hooks import ForwardState, Handles, HookOwner, attach
from actscope.capture.trace import sitemap_of
from actscope.errors import ActscopeError
from actscope.interventions.sparsify_plan import SparsityCalibration, SparsityPlan
from actscope.interventions.sparsify_rules import (
    Scorer,
    Unit,
    block_weights,
    keep_threshold,
    keep_topk,
    make_scorer,
    rule_units,
    source_site,
)
from actscope.kernels.sparse_linear import GateObserver, MaskBox, RowSparseLinear, SparseLinear


def prefill_positions(attention_mask: Tensor, fraction: float) -> Tensor:
    """(B, T) bool: the last ``k = floor(fraction * n + 1/2)`` real tokens of each row.

    ``n`` is the row's number of real tokens (``attention_mask`` 1); padding is never selected.
    """
    real = attention_mask.bool()
    n = real.sum(dim=1, keepdim=True)
    rank = real.long().cumsum(dim=1) - 1
    k = torch.floor(n.double() * fraction + 0.5).long()
    return real & (rank >= n - k)


@dataclass
class UnitRule:
    """How one unit decides its mask: a scorer and a threshold or a top-k sparsity."""

    unit: Unit
    scorer: Scorer
    threshold: float | None = None
    topk: float | None = None

    def keep(self, value: Tensor) -> Tensor:
        """Bool mask of kept entries for the tensor named by ``source_site(unit)``."""
        score = self.scorer(value)
        if self.topk is not None:
            return keep_topk(score, self.topk)
        if self.threshold is None:
            raise ActscopeError(f"unit {self.unit.site} has neither a threshold nor a top-k level")
        return keep_threshold(score, self.threshold)


@dataclass
class _Counts:
    zeros: dict[str, Tensor] = field(default_factory=dict)
    entries: dict[str, Tensor] = field(default_factory=dict)

    def add(self, site: str, zeros: Tensor, entries: Tensor) -> None:
        if site in self.zeros:
            self.zeros[site] += zeros
            self.entries[site] += entries
        else:
            self.zeros[site] = zeros.clone()
            self.entries[site] = entries.clone()


Observer = Callable[[str, Tensor, Tensor | None], None]
"""``observer(unit_site, source_value, counted)``: a unit's score source before its edit."""


class Sparsifier(HookOwner):
    """Zero small Linear-input entries through owned edit hooks (a context manager).

    Build one with :meth:`from_plan` (calibrated thresholds) or :meth:`exact_topk`. An
    ``observer`` sees every unit's score source (its input, or the gate for CHESS) *before*
    the unit edits it, with the (B, T) mask of the counted tokens (None = all): calibration
    uses it to re-measure score distributions under upstream sparsification.
    """

    def __init__(
        self,
        lm: Any,
        rules: list[UnitRule],
        *,
        prefill_fraction: float = 1.0,
        record: bool = True,
        description: dict[str, Any] | None = None,
        observer: Observer | None = None,
    ) -> None:
        if not 0.0 <= prefill_fraction <= 1.0:
            raise ActscopeError(f"prefill_fraction must lie in [0, 1], got {prefill_fraction}")
        self.lm = lm
        self.sitemap = sitemap_of(lm)
        self.rules = {r.unit.site: r for r in rules}
        self.prefill_fraction = float(prefill_fraction)
        self.record = record
        self.description = dict(description or {})
        self.observer = observer
        self._handles = Handles()
        self._state = ForwardState()
        self._sel: Tensor | None = None
        self._boxes: dict[int, Tensor] = {}
        self._counts = _Counts()

    # construction ---------------------------------------------------------------------------
    @classmethod
    def from_plan(
        cls,
        lm: Any,
        plan: SparsityPlan,
        calibration: SparsityCalibration | None = None,
        *,
        prefill_fraction: float = 1.0,
        record: bool = True,
        observer: Observer | None = None,
    ) -> Sparsifier:
        """Calibrated thresholds of ``plan`` (CHESS plans need the calibration's E[u^2])."""
        chess = calibration.chess_tensors() if calibration is not None else None
        units = {u.site: u for u in rule_units(lm, plan.rule)}
        rules = []
        for site, t in plan.thresholds.items():
            if site not in units:
                raise ActscopeError(
                    f"the plan names site '{site}', which is no {plan.rule} unit here"
                )
            rules.append(UnitRule(units[site], make_scorer(lm, units[site], chess), threshold=t))
        desc = {
            "mode": "threshold",
            "rule": plan.rule,
            "allocation": plan.allocation,
            "target": plan.target,
        }
        return cls(
            lm,
            rules,
            prefill_fraction=prefill_fraction,
            record=record,
            description=desc,
            observer=observer,
        )

    @classmethod
    def exact_topk(
        cls,
        lm: Any,
        rule: str,
        sparsity: float,
        *,
        chess_up_sq: dict[int, Tensor] | None = None,
        prefill_fraction: float = 1.0,
        record: bool = True,
    ) -> Sparsifier:
        """Keep exactly ``d - round(sparsity * d)`` entries of every unit per token."""
        if not 0.0 <= sparsity <= 1.0:
            raise ActscopeError(f"sparsity must lie in [0, 1], got {sparsity}")
        rules = [
            UnitRule(u, make_scorer(lm, u, chess_up_sq), topk=sparsity)
            for u in rule_units(lm, rule)
        ]
        desc = {"mode": "topk", "rule": rule, "allocation": "uniform", "target": sparsity}
        return cls(lm, rules, prefill_fraction=prefill_fraction, record=record, description=desc)

    # hooks ----------------------------------------------------------------------------------
    def attach(self) -> Sparsifier:
        """Register the hooks; attaching again before :meth:`remove` raises."""
        if self._handles.items:
            raise ActscopeError("this Sparsifier is already attached")
        sm = self.sitemap
        try:
            for site, rule in self.rules.items():
                if rule.unit.score == "chess":
                    src = sm.get(source_site(rule.unit))
                    self._add(attach(sm, src, self._gate_observer(rule), self._state))
                self._add(attach(sm, sm.get(site), self._edit(rule), self._state, edit=True))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove exactly the hooks this object registered."""
        self._handles.remove()
        self._boxes.clear()

    def _add(self, h: Handles) -> None:
        self._handles.items += h.items

    def set_mask(self, attention_mask: Tensor | None) -> None:
        """Declare the padding of the next multi-position forward pass (1 = real token)."""
        if attention_mask is None:
            self._sel = None
            return
        self._sel = prefill_positions(attention_mask, self.prefill_fraction)

    def _positions(self, value: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(sparsified positions, counted positions) as (B, T) bools; None = all."""
        if value.dim() != 3 or value.shape[1] == 1:
            return None, None
        b, t = value.shape[:2]
        if self._sel is not None and tuple(self._sel.shape) == (b, t):
            return self._sel, self._sel
        if self.prefill_fraction >= 1.0:
            return None, None
        sel = prefill_positions(torch.ones(b, t, device=value.device), self.prefill_fraction)
        return sel, sel

    def _apply(self, site: str, value: Tensor, keep: Tensor) -> Tensor:
        sel, counted = self._positions(value)
        if sel is not None:
            keep = keep | ~sel.to(keep.device).unsqueeze(-1)
        out = value * keep.to(value.dtype)
        if self.record:
            zero = out == 0
            if counted is None:
                entries = torch.tensor(zero.numel(), device=value.device)
            else:
                cm = counted.to(value.device).unsqueeze(-1)
                zero = zero & cm
                entries = cm.sum() * value.shape[-1]
            self._counts.add(site, zero.sum(), entries)
        return out

    def _edit(self, rule: UnitRule) -> Callable[[Tensor, Tensor | None], Tensor]:
        site, layer, chess = rule.unit.site, rule.unit.layer, rule.unit.score == "chess"

        def edit(value: Tensor, mask: Tensor | None) -> Tensor:
            if chess:
                keep = self._boxes.pop(layer, None)
                if keep is None or keep.shape != value.shape:
                    raise ActscopeError(f"CHESS mask of layer {layer} missing for {site}")
            else:
                self._observe(site, value)
                keep = rule.keep(value)
            return self._apply(site, value, keep)

        return edit

    def _gate_observer(self, rule: UnitRule) -> Callable[[Tensor, Tensor | None], None]:
        layer = rule.unit.layer

        def observe(value: Tensor, mask: Tensor | None) -> None:
            self._observe(rule.unit.site, value)
            self._boxes[layer] = rule.keep(value)

        return observe

    def _observe(self, site: str, value: Tensor) -> None:
        if self.observer is not None:
            self.observer(site, value, self._positions(value)[1])

    # results --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the realised-sparsity counts."""
        self._counts = _Counts()

    def realised(self) -> dict[str, float]:
        """Per unit site: zero entries / counted entries of its input so far."""
        out: dict[str, float] = {}
        for site, z in self._counts.zeros.items():
            n = int(self._counts.entries[site])
            out[site] = int(z) / n if n else float("nan")
        return out

    def overall(self) -> float:
        """Zero entries / counted entries over every unit together (entries-weighted)."""
        zeros = sum(int(z) for z in self._counts.zeros.values())
        entries = sum(int(n) for n in self._counts.entries.values())
        return zeros / entries if entries else float("nan")

    def weight_sparsity(self, realised: dict[str, float] | None = None) -> float:
        """Skipped / total Linear weights of the decoder blocks, from per-unit sparsities."""
        got = self.realised() if realised is None else realised
        total = sum(block_weights(self.lm).values())
        skipped = sum(got.get(site, 0.0) * r.unit.n_weights for site, r in self.rules.items())
        return skipped / total if total else float("nan")

    @property
    def n_hooks(self) -> int:
        return len(self._handles.items)

    # sparse decode --------------------------------------------------------------------------
    def decode_modules_paths(self) -> list[str]:
        """Paths of the Linear layers whose weight reads the sparse path reduces."""
        sm = self.sitemap
        paths = []
        for site, rule in self.rules.items():
            if rule.unit.score == "chess":
                paths.append(sm.get(f"up_in.{rule.unit.layer}").module)
            paths.append(sm.get(site).module)
        return paths

    def decode_modules(self, kernel: str = "bag") -> dict[str, nn.Module]:
        """Module path -> stand-in that skips the weights of dropped entries (same masks).

        Use with :func:`actscope.kernels.swapped_modules`. The stand-ins sparsify every token
        they see (``prefill_fraction`` = 1); single rows go through the sparse kernel.
        """
        sm = self.sitemap
        out: dict[str, nn.Module] = {}
        for site, rule in self.rules.items():
            path = sm.get(site).module
            linear = sm.model.get_submodule(path)
            if rule.unit.score != "chess":
                out[path] = SparseLinear(linear, rule.keep, kernel=kernel)
                continue
            layer = rule.unit.layer
            box = MaskBox()
            gate = sm.get(f"gate_in.{layer}").module
            up = sm.get(f"up_in.{layer}").module
            out[gate] = GateObserver(sm.model.get_submodule(gate), rule.keep, box)
            out[up] = RowSparseLinear(sm.model.get_submodule(up), box)
            out[path] = SparseLinear(linear, box=box, kernel=kernel)
        return out
