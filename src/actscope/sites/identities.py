"""The identities that define what each site means, checked on one short probe forward pass.

:func:`check_sitemap` runs the probe (two rows of a few tokens, the second left-padded),
captures every site at hook time (cloned, so later in-place writes by the model cannot
change it) and returns one :class:`Check` per identity:

* every offered site produces a value on the probe (a hook on a module the forward pass
  never calls would otherwise be silently empty);
* ``shape``: every per-token site is (batch, seq, ...), router logits (batch, seq, n_experts);
* ``embed == resid_pre.0``; ``resid_post.l == resid_pre.(l+1)``;
* ``resid_mid.l == resid_pre.l + sum of the layer's mixer outputs`` (attn_out, ssm_out, ...);
* ``resid_post.l == resid_mid.l + mlp_out.l`` (or resid_pre + mixers + mlp_out without
  resid_mid);
* ``logits`` equal the logits the model returns; ``final_norm`` gives them back through the
  unembedding, the family's logits scale and soft-cap;
* ``mlp_act.l == down_in.l``; every Linear site ``X_out == module(X_in)``;
* ``router_logits == W mlp_in (+ b)`` for a router with one weight matrix;
* ``sum_e expert_out.l.e (+ the shared expert's output, gated when the block has a
  ``shared_expert_gate``) == mlp_out.l``.

The error of a check is ``max |lhs - rhs| / max(1, max |rhs|)``; it passes at or below
``tol`` (1e-5 by default: float32 summation order differs between the model and the check).
Used by the invariant tests, the compatibility table script and discovery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from actscope.sites.sitemap import SiteMap
from actscope.sites.vocabulary import LAYER_KINDS, MIXER_OUT_KINDS

TOL = 1e-5


@dataclass(frozen=True)
class Check:
    """One identity on one site: ``error`` as defined in the module docstring."""

    site: str
    identity: str
    error: float
    ok: bool


def probe_inputs(vocab_size: int, n_tokens: int = 6) -> tuple[Tensor, Tensor]:
    """Two rows of ``n_tokens`` ids (row 2 left-padded by 2) and their attention mask."""
    ids = (torch.arange(2 * n_tokens).reshape(2, n_tokens) * 7 + 3) % max(vocab_size - 3, 1)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return ids, mask


def capture(sm: SiteMap, ids: Tensor, mask: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Every site of ``sm`` at hook time (cloned) and the logits the model returns."""
    from actscope.capture.runner import forward
    from actscope.capture.trace import Trace

    values: dict[str, Tensor] = {}

    def keep(name: str, value: Tensor, mask: Tensor | None) -> None:
        values[name] = value.detach().clone()

    dev = next(sm.model.parameters()).device
    with torch.inference_mode(), Trace(sm, "all", consumers=[keep]) as tr:
        tr.set_mask(mask.to(dev))
        logits = forward(sm.model, ids.to(dev), mask.to(dev)).logits
    return values, logits.detach()


def error(lhs: Tensor, rhs: Tensor) -> float:
    """max |lhs - rhs| / max(1, max |rhs|), in float64; inf when the shapes differ."""
    if lhs.shape != rhs.shape:
        return float("inf")
    a, b = lhs.double(), rhs.double()
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def check_sitemap(sm: SiteMap, tol: float = TOL) -> list[Check]:
    """Run the probe on ``sm.model`` and check every identity of its sites."""
    ids, mask = probe_inputs(int(sm.model.get_input_embeddings().weight.shape[0]))
    values, logits = capture(sm, ids, mask)
    return check_values(sm, values, logits, tuple(ids.shape), tol)


def check_values(
    sm: SiteMap,
    r: dict[str, Tensor],
    logits: Tensor,
    token_shape: tuple[int, ...],
    tol: float = TOL,
) -> list[Check]:
    """The identities of the module docstring on captured values ``r``."""
    with torch.inference_mode():
        return _check_values(sm, r, logits, token_shape, tol)


def _check_values(
    sm: SiteMap,
    r: dict[str, Tensor],
    logits: Tensor,
    token_shape: tuple[int, ...],
    tol: float,
) -> list[Check]:
    out: list[Check] = []

    def add(site: str, identity: str, lhs: Tensor | None, rhs: Tensor) -> None:
        e = float("inf") if lhs is None else error(lhs, rhs)
        out.append(Check(site, identity, e, e <= tol))

    for name in sm.names:  # a hook that never fires would be a site that silently is not
        if name not in r:
            out.append(Check(name, "produced on the probe", float("inf"), False))
    sites = {n: sm.get(n) for n in r}
    for name, s in sites.items():
        if s.layer is not None or s.kind in ("embed", "final_norm", "logits"):
            ok = tuple(r[name].shape[:2]) == token_shape
            if s.kind == "router_logits" and sm.n_experts:
                ok = ok and r[name].shape[-1] == sm.n_experts
            out.append(Check(name, "shape (batch, seq, ...)", 0.0 if ok else float("inf"), ok))
    if "embed" in r and "resid_pre.0" in r:
        add("embed", "embed == resid_pre.0", r["embed"], r["resid_pre.0"])
    for i in range(sm.n_layers):
        _layer_checks(sm, r, i, add)
    if "logits" in r:
        add("logits", "logits == model output", r["logits"], logits)
    if "final_norm" in r:
        add(
            "final_norm",
            "unembed(final_norm) == model logits",
            _relogit(sm, r["final_norm"]),
            logits,
        )
    for name, s in sites.items():
        if s.kind.endswith("_out") and s.kind not in LAYER_KINDS and s.kind != "expert_out":
            x = r.get(name.replace("_out.", "_in.", 1))
            if x is not None:
                add(name, f"{s.kind} == module({s.kind[:-4]}_in)", sm.module(s)(x), r[name])
        if s.kind == "router_logits" and f"mlp_in.{s.layer}" in r:
            w = router_weight(sm.module(s))
            if w is not None:
                x = r[f"mlp_in.{s.layer}"].to(w[0].dtype)
                lin = nn.functional.linear(x, *w)
                add(name, "router_logits == W mlp_in + b", lin.to(r[name].dtype), r[name])
    return out


def _layer_checks(
    sm: SiteMap, r: dict[str, Tensor], i: int, add: Callable[[str, str, Tensor, Tensor], None]
) -> None:
    pre, mid, post, mlp = (
        r.get(f"{k}.{i}") for k in ("resid_pre", "resid_mid", "resid_post", "mlp_out")
    )
    mixer_names = [k for k in MIXER_OUT_KINDS if f"{k}.{i}" in r]
    mixers = [r[f"{k}.{i}"] for k in mixer_names]
    missing_mixer = any(f"{k}.{i}" in sm.dropped for k in MIXER_OUT_KINDS)
    mixed = None if (pre is None or not mixers or missing_mixer) else _sum(pre, *mixers)
    label = " + ".join(["resid_pre", *mixer_names])
    if mid is not None and mixed is not None:
        add(f"resid_mid.{i}", f"resid_mid == {label}", mixed, mid)
    if post is not None and mlp is not None:
        if mid is not None:
            add(f"mlp_out.{i}", "resid_post == resid_mid + mlp_out", _sum(mid, mlp), post)
        elif mixed is not None:
            add(f"mlp_out.{i}", f"resid_post == {label} + mlp_out", _sum(mixed, mlp), post)
    no_mlp = f"mlp_in.{i}" not in sm and f"mlp_out.{i}" not in sm.dropped
    if no_mlp and mid is None and mlp is None and post is not None and mixed is not None:
        add(f"{mixer_names[-1]}.{i}", f"resid_post == {label} (no MLP)", mixed, post)
    nxt = r.get(f"resid_pre.{i + 1}")
    if post is not None and nxt is not None:
        add(f"resid_post.{i}", "resid_post == next resid_pre", post, nxt)
    if f"mlp_act.{i}" in r and f"down_in.{i}" in r:
        add(f"mlp_act.{i}", "mlp_act == down_in", r[f"mlp_act.{i}"], r[f"down_in.{i}"])
    experts = [r[n] for n in r if n.startswith(f"expert_out.{i}.")]
    if not experts or mlp is None:
        return
    total = _sum(*experts)
    label = "sum_e expert_out"
    shared = r.get(f"shared_down_out.{i}")
    if shared is not None and total is not None and sm.adapter.router:
        block = sm.model.get_submodule(
            f"{sm.adapter.layers}.{i}.{sm.adapter.router}".rsplit(".", 1)[0]
        )
        gate = getattr(block, "shared_expert_gate", None)
        if isinstance(gate, nn.Linear) and f"mlp_in.{i}" in r:
            shared = torch.sigmoid(gate(r[f"mlp_in.{i}"])) * shared
            label += " + sigmoid(shared_expert_gate mlp_in) shared_down_out"
        else:
            label += " + shared_down_out"
        total = _sum(total, shared)
    elif any(n.startswith("shared_") and n.endswith(f".{i}") for n in sm.names):
        return  # a shared expert whose output is not offered: the sum cannot be formed
    add(f"expert_out.{i}", f"{label} == mlp_out", total, mlp)


def _sum(*ts: Tensor) -> Tensor | None:
    """Sum of tensors of one shape, or None when the shapes differ (the check then fails)."""
    if any(t.shape != ts[0].shape for t in ts):
        return None
    total = ts[0]
    for t in ts[1:]:
        total = total + t
    return total


def _relogit(sm: SiteMap, h: Tensor) -> Tensor:
    z = sm.model.get_output_embeddings()(h)
    a = sm.adapter.logits_scale
    if a is not None:
        z = z * a.factor(sm.config)
    if sm.softcap:
        z = torch.tanh(z / sm.softcap) * sm.softcap
    return z


def router_weight(mod: nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """(weight, bias) of a router that is one linear map: its own, or its only Linear child."""
    w = getattr(mod, "weight", None)
    if not isinstance(w, Tensor):
        lins = [m for m in mod.modules() if isinstance(m, nn.Linear)]
        if len(lins) != 1:
            return None
        mod, w = lins[0], lins[0].weight
    if w.dim() != 2:
        return None
    b = getattr(mod, "bias", None)
    return w, b if isinstance(b, Tensor) else None


def failures(checks: list[Check]) -> dict[str, str]:
    """Failed checks as site name -> 'identity (error e)' (first failure of each site)."""
    bad: dict[str, str] = {}
    for c in checks:
        if not c.ok and c.site not in bad:
            bad[c.site] = f"fails {c.identity} (error {c.error:.2g})"
    return bad


def summary(sm: SiteMap, checks: list[Check]) -> dict[str, Any]:
    """Offered sites, sites checked, sites failing (with reasons) and sites not offered."""
    return {
        "n_sites": len(sm.names),
        "checked": sorted({c.site for c in checks}),
        "failed": failures(checks),
        "dropped": dict(sm.dropped),
    }
