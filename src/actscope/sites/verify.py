"""Every site's meaning checked on a probe forward pass, whatever made the site map.

A site map comes from a declarative adapter or from discovery; either can be wrong for a
family (a residual added inside the module, a norm after it, a scaled branch...). Before a
site is offered, :func:`verify_sitemap` runs one short forward pass (batch 2 x 6 tokens, the
second row right-padded by 2) with every site observed, and checks on the real tokens:

* ``embed = resid_pre.0`` and ``resid_post.l = resid_pre.(l+1)``;
* ``resid_mid = resid_pre + attn_out``, ``resid_post = resid_mid + mlp_out`` and
  ``resid_post = resid_pre + attn_out + mlp_out`` (the last one also where ``resid_mid`` is
  derived or absent);
* ``logits`` = the logits the model returns, and those logits recomputed from ``final_norm``
  through the LM head, with the site map's logits :class:`~actscope.sites.adapters.Scale` and
  soft-cap (or, when those do not fit, whichever of the config's ``final_logit_softcapping``,
  ``logits_scaling``, ``logit_scale``, ``lm_head_multiplier``, ``output_multiplier`` fits);
* ``mlp_act = down_in`` and ``mlp_gate = gate_out`` where both sites exist (a projection's
  own ``_in``/``_out`` are its call's argument and result: nothing to check there);
* ``router_logits = W mlp_in (+ b)`` for a router that is one linear map;
* ``sum_e expert_out.e (+ shared_down_out, gated by sigmoid(shared_expert_gate mlp_in) where
  the block has that gate) = mlp_out``;
* every site produces a value on the probe, shaped (batch, seq, ...).

Sites are captured as every consumer sees them: flattened rows reshaped, and a site with a
``scale`` (a branch or the logits the family scales outside any module) multiplied by it, so
the identities check the scale too.

On hybrid layers ``attn_out`` above stands for the sum of the layer's token-mixer outputs
(``attn_out``, ``ssm_out``, ``linattn_out``, ``conv_out``: ``MIXER_OUT_KINDS``), and a layer
without an MLP (Mamba) checks ``resid_post = resid_pre + ssm_out``.

Error of an identity ``lhs = rhs``: ``max abs err = max |lhs - rhs|`` and
``rel err = max over tokens t of max_d |lhs - rhs|_td / max_d max_terms |term|_td``: the worst
token's error relative to that token's largest operand (so one token's massive activation does
not hide an error in the others). It passes when ``rel err <= TOLERANCE[dtype]``: a few units
of rounding of the dtype the probe ran in. The probe runs in float32 when the weights are
16-bit and memory allows a float32 copy of them for its duration (every parameter and buffer
gets its own 16-bit storage back), so a bf16 model is held to float32's 1e-4 rather than
bf16's 3e-2; otherwise in the model's dtype. The identities themselves are evaluated in
float64.

Blame: a site is dropped when an identity that can blame it fails and no passing identity
involves it (``resid_mid = resid_pre + attn_out`` failing while ``resid_post = resid_mid +
mlp_out`` holds blames ``attn_out``). The layer's own input and output (``resid_pre``,
``resid_post``) are blamed only by the chain and embedding identities.

The probe also finds the sites whose tensor the model writes into *after* the hook has seen it
(Falcon's ``mlp_output += attention_output``): ``Verification.inplace``; captures copy those.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor, nn

from actscope.capture.hooks import ForwardState, Handles, attach
from actscope.capture.runner import forward
from actscope.errors import UnsupportedFamilyError
from actscope.models.paths import cache_root
from actscope.sites.sitemap import SiteMap
from actscope.sites.vocabulary import MIXER_OUT_KINDS
from actscope.utils.atomic import atomic_write_text
from actscope.utils.devices import input_device
from actscope.utils.hashing import sha256_text

log = logging.getLogger(__name__)

TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}
"""Largest relative error (see the module docstring) an identity may show, per model dtype."""

FORMAT = 4
"""Version of the checks; part of the cache key, so changing the checks invalidates it."""

BATCH, SEQ, PAD = 2, 6, 2
_TINY = 1e-30


class SiteDroppedWarning(UserWarning):
    """A site failed its identity or its shape on the probe and is not offered."""


@dataclass(frozen=True)
class Check:
    """One identity evaluated on the probe.

    ``site`` is the site the identity is written for (its left-hand side), ``identity`` the
    formula without layer indices, ``status`` ``pass``, ``fail`` or ``skipped`` (could not be
    evaluated: the reason is in ``note``), ``involves`` every site the identity contains.
    """

    site: str
    kind: str
    identity: str
    max_abs_err: float
    rel_err: float
    status: str
    note: str = ""
    involves: tuple[str, ...] = ()


@dataclass
class Verification:
    """Result of :func:`verify_sitemap`.

    ``dtype`` is the dtype the probe ran in and ``tolerance`` the relative error it allowed.
    ``checks`` has one row per identity instance (per layer); ``dropped`` maps each site that
    is not offered to the reason; ``inplace`` lists the sites written in place after their
    hook; ``seconds`` is the cost of the probe (0 when read from the cache, ``cached`` True).
    ``error`` is set when the probe could not run at all (then nothing is dropped).
    """

    family: str
    dtype: str
    tolerance: float
    n_sites: int
    checks: list[Check] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    inplace: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False
    error: str | None = None

    def table(self) -> list[dict[str, Any]]:
        """One row per identity (layers pooled): kind, identity, n, failed, worst errors, status.

        ``status`` is ``pass``, ``fail`` (every instance failed), ``partial`` (some layers
        failed) or ``skipped``; shape failures appear as the identity ``shape (batch, seq, ...)``.
        """
        rows: dict[str, dict[str, Any]] = {}
        for c in self.checks:
            r = rows.setdefault(
                c.identity,
                {
                    "kind": c.kind,
                    "identity": c.identity,
                    "n": 0,
                    "failed": 0,
                    "max_abs_err": 0.0,
                    "rel_err": 0.0,
                    "statuses": set(),
                    "failed_sites": [],
                },
            )
            r["n"] += 1
            r["statuses"].add(c.status)
            if c.status == "fail":
                r["failed"] += 1
                r["failed_sites"].append(c.site)
            if c.status != "skipped":
                r["max_abs_err"] = max(r["max_abs_err"], c.max_abs_err)
                r["rel_err"] = max(r["rel_err"], c.rel_err)
        for r in rows.values():
            st = r.pop("statuses")
            r["status"] = (
                "skipped"
                if st == {"skipped"}
                else "fail"
                if r["failed"] == r["n"]
                else "partial"
                if r["failed"]
                else "pass"
            )
        return list(rows.values())

    def checked(self) -> set[str]:
        """Every site some evaluated (passing or failing) identity contains."""
        return {n for c in self.checks if c.status != "skipped" for n in (c.site, *c.involves)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verification:
        d = dict(d)
        d["checks"] = [
            Check(**{**c, "involves": tuple(c.get("involves", ()))}) for c in d.get("checks", [])
        ]
        return cls(**d)


# the probe ------------------------------------------------------------------------------------
def probe_ids(model: nn.Module, tokenizer: Any) -> tuple[Tensor, Tensor]:
    """(BATCH, SEQ) token ids and attention mask; row 1 is right-padded by PAD tokens."""
    vocab = int(model.get_input_embeddings().weight.shape[0])
    ids = (torch.arange(BATCH * SEQ).reshape(BATCH, SEQ) * 7919 + 11) % max(vocab - 1, 1)
    bos = getattr(tokenizer, "bos_token_id", None)
    if isinstance(bos, int) and 0 <= bos < vocab:
        ids[:, 0] = bos
    pad = getattr(tokenizer, "pad_token_id", None)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, SEQ - PAD :] = 0
    ids[1, SEQ - PAD :] = pad if isinstance(pad, int) and 0 <= pad < vocab else 0
    return ids, mask


def _free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device`` (CUDA: the driver's count; CPU: free pages)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu" and hasattr(os, "sysconf"):
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return 0


@contextlib.contextmanager
def _float32(model: nn.Module) -> Iterator[bool]:
    """Run the body with the model's 16-bit floating weights in float32, when memory allows.

    Each parameter and buffer gets its own 16-bit storage back afterwards (kept aside, not
    converted back). Yields whether the model now computes in float32.
    """
    low = (torch.float16, torch.bfloat16)
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.dtype in low]
    need: dict[torch.device, int] = {}
    for t in tensors:
        need[t.device] = need.get(t.device, 0) + 4 * t.numel()
    offloaded = any(t.device.type == "meta" for t in tensors)  # accelerate loads them itself
    if not tensors or offloaded or any(2 * n > _free_bytes(d) for d, n in need.items()):
        yield not tensors
        return
    orig = [(t, t.data) for t in tensors]
    try:
        for t, _ in orig:
            t.data = t.data.float()
        yield True
    finally:
        for t, data in orig:
            t.data = data


def _run_probe(
    model: nn.Module, sm: SiteMap, tokenizer: Any
) -> tuple[dict[str, Tensor], set[str], Tensor | None, Tensor]:
    """Values of every site at hook time, the sites written in place later, logits, mask."""
    ids, mask = probe_ids(model, tokenizer)
    dev = input_device(model)
    ids, mask = ids.to(dev), mask.to(dev)
    snap: dict[str, Tensor] = {}
    live: dict[str, Tensor] = {}

    def keeper(name: str) -> Callable[[Tensor, Tensor | None], None]:
        def keep(value: Tensor, _mask: Tensor | None) -> None:
            live[name] = value.detach()
            snap[name] = value.detach().clone()

        return keep

    state = ForwardState()
    handles = Handles()
    try:
        for site in sm.resolve("all"):
            if site.mode == "expert" and site.expert != 0 and site.kind != "expert_out":
                continue  # the same computation for every expert: expert 0 stands for them
            handles.items += attach(sm, site, keeper(site.name), state).items
        with torch.inference_mode():
            out = forward(model, ids, mask)
    finally:
        handles.remove()
    rewritten = {
        n
        for n, v in snap.items()
        if not torch.equal(live[n], v)  # NaN != NaN: a copy too
    }
    logits = getattr(out, "logits", None)
    return snap, rewritten, logits, mask.bool()


# identities -----------------------------------------------------------------------------------
@dataclass
class _Identity:
    site: str
    kind: str
    text: str
    involves: tuple[str, ...]
    blames: tuple[str, ...]
    compute: Callable[[], tuple[Tensor, Tensor, list[Tensor]]]


def _errors(
    lhs: Tensor, rhs: Tensor, terms: list[Tensor], real: Tensor
) -> tuple[float, float] | None:
    """(max abs err, rel err) over the real tokens whose operands are all finite (module
    docstring); None when no such token is left: NaN or Inf in the model's own values say
    nothing about what a site means, so such an identity cannot be judged."""
    if lhs.shape != rhs.shape:
        return float("inf"), float("inf")
    ok = real.clone()
    for t in (lhs, rhs, *terms):
        if t.shape[:2] == real.shape:
            ok &= torch.isfinite(t).flatten(2).all(-1)
    if not bool(ok.any()):
        return None
    d = (lhs.double() - rhs.double()).abs().flatten(2).amax(-1)[ok]  # per token
    scale = torch.stack([t.abs().flatten(2).amax(-1)[ok].double() for t in terms]).amax(0)
    rel = d / scale.clamp_min(_TINY)
    err, worst = torch.stack([d.max(), rel.max()]).tolist()
    if not (math.isfinite(err) and math.isfinite(worst)):
        return float("inf"), float("inf")
    return err, worst


def rel_error(lhs: Tensor, rhs: Tensor) -> float:
    """The ``rel err`` of ``lhs = rhs`` (module docstring) with ``rhs`` as the only operand,
    every vector along the last dimension counted as one token; inf when the shapes differ."""
    if lhs.shape != rhs.shape or lhs.dim() == 0:
        return float("inf")
    a, b = (t.reshape(1, -1, t.shape[-1]) for t in (lhs, rhs))
    res = _errors(a, b, [b], torch.ones(b.shape[:2], dtype=torch.bool, device=b.device))
    return math.inf if res is None else res[1]


def _logit_transforms(model: nn.Module) -> list[tuple[str, Callable[[Tensor], Tensor]]]:
    """The final scalings families apply to ``lm_head(final_norm)``, read from the config."""
    cfg = model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    out: list[tuple[str, Callable[[Tensor], Tensor]]] = [("lm_head(final_norm)", lambda x: x)]
    for c in {id(cfg): cfg, id(text): text}.values():
        cap = getattr(c, "final_logit_softcapping", None)
        if cap:
            out.append(
                ("cap*tanh(lm_head(final_norm)/cap)", lambda x, c=cap: torch.tanh(x / c) * c)
            )
        for attr in ("logits_scaling", "logit_scale", "lm_head_multiplier", "output_multiplier"):
            s = getattr(c, attr, None)
            if isinstance(s, int | float) and s not in (0, 1):
                out.append((f"lm_head(final_norm) * {attr}", lambda x, s=s: x * s))
                out.append((f"lm_head(final_norm) / {attr}", lambda x, s=s: x / s))
    return out


def _sum64(terms: list[Tensor]) -> Tensor:
    """``terms[0] + terms[1] + ...`` in float64, left to right."""
    total = terms[0].double()
    for t in terms[1:]:
        total = total + t.double()
    return total


def _identities(
    sm: SiteMap, r: dict[str, Tensor], logits: Tensor | None, real: Tensor, tol: float
) -> list[_Identity]:
    """Every identity whose sites were all captured (``r``: site -> value at hook time)."""
    ids: list[_Identity] = []

    def add(text: str, lhs: str, rhs: tuple[str, ...], blames: tuple[str, ...]) -> None:
        """``lhs = sum(rhs)``, the sum taken in float64."""
        if lhs in r and all(n in r for n in rhs):
            ids.append(
                _Identity(
                    lhs,
                    lhs.split(".")[0],
                    text,
                    (lhs, *rhs),
                    blames,
                    lambda: (r[lhs], _sum64([r[n] for n in rhs]), [r[n] for n in rhs]),
                )
            )

    add("embed = resid_pre.0", "embed", ("resid_pre.0",), ("embed",))
    for i in range(sm.n_layers):
        pre, mid, m, post = (
            f"{k}.{i}" for k in ("resid_pre", "resid_mid", "mlp_out", "resid_post")
        )
        # The layer's mixer outputs (attn_out, ssm_out, ...): every one must be captured.
        mixers = tuple(f"{k}.{i}" for k in MIXER_OUT_KINDS if f"{k}.{i}" in sm or f"{k}.{i}" in r)
        if (
            not mixers
            or any(n not in r for n in mixers)
            or any(f"{k}.{i}" in sm.dropped for k in MIXER_OUT_KINDS)
        ):
            mixers = ()
        mix = " + ".join(n.split(".")[0] for n in mixers)
        derived = mid in sm and sm.get(mid).mode == "derived"  # computed as that sum: it checks
        if mixers:  # the capture of the derived site, and blames nothing else
            add(
                f"resid_mid = resid_pre + {mix}",
                mid,
                (pre, *mixers),
                (mid,) if derived else (mid, *mixers),
            )
        if not derived:
            add("resid_post = resid_mid + mlp_out", post, (mid, m), (mid, m))
        if mixers and m in r:
            add(f"resid_post = resid_pre + {mix} + mlp_out", post, (pre, *mixers, m), (*mixers, m))
        no_mlp = f"mlp_in.{i}" not in sm and m not in sm and m not in sm.dropped
        if mixers and no_mlp and mid not in sm:
            add(f"resid_post = resid_pre + {mix} (no MLP)", post, (pre, *mixers), mixers)
        if i + 1 < sm.n_layers:
            nxt = f"resid_pre.{i + 1}"
            add("resid_post = resid_pre of the next layer", post, (nxt,), (post, nxt))
        add("mlp_act = down_in", f"mlp_act.{i}", (f"down_in.{i}",), (f"mlp_act.{i}",))
        add("mlp_gate = gate_out", f"mlp_gate.{i}", (f"gate_out.{i}",), (f"mlp_gate.{i}",))
        _add_router(sm, r, i, ids)
        _add_experts(sm, r, i, ids)
    if logits is not None:
        if "logits" in r:
            ids.append(
                _Identity(
                    "logits",
                    "logits",
                    "logits = the model's logits",
                    ("logits",),
                    ("logits",),
                    lambda: (r["logits"], logits, [logits]),
                )
            )
        if "final_norm" in r:
            _add_final_norm(sm, r, logits, real, ids, tol)
    return ids


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


def _add_router(sm: SiteMap, r: dict[str, Tensor], i: int, ids: list[_Identity]) -> None:
    """``router_logits = W mlp_in (+ b)`` for a router that is one linear map."""
    name, x = f"router_logits.{i}", f"mlp_in.{i}"
    if name not in r or x not in r:
        return
    w = router_weight(sm.module(sm.get(name)))
    if w is None or w[0].shape[0] != r[name].shape[-1] or w[0].shape[1] != r[x].shape[-1]:
        return
    weight, bias = w[0].double(), None if w[1] is None else w[1].double()

    def compute() -> tuple[Tensor, Tensor, list[Tensor]]:
        z = nn.functional.linear(r[x].double(), weight, bias)
        return r[name], z, [z]

    ids.append(
        _Identity(
            name, "router_logits", "router_logits = W mlp_in (+ b)", (name,), (name,), compute
        )
    )


def _add_experts(sm: SiteMap, r: dict[str, Tensor], i: int, ids: list[_Identity]) -> None:
    """``sum_e expert_out.e (+ the shared expert's output) = mlp_out``.

    The shared expert's output is ``shared_down_out``, gated by ``sigmoid(shared_expert_gate
    mlp_in)`` where the MoE block has such a gate (Qwen2-MoE). Not formed when a shared expert
    exists whose output is not captured, or when an expert's output is missing.
    """
    m = f"mlp_out.{i}"
    experts = [n for n in sm.names if n.startswith(f"expert_out.{i}.")]
    if m not in r or not experts or any(n not in r for n in experts):
        return
    shared = f"shared_down_out.{i}"
    text = "sum_e expert_out"
    gate = None
    if shared in r:
        block = sm.get(experts[0]).module.rsplit(".", 1)[0]
        g = getattr(sm.model.get_submodule(block), "shared_expert_gate", None)
        if isinstance(g, nn.Linear):
            if f"mlp_in.{i}" not in r:
                return
            gate = g
            text += " + sigmoid(shared_expert_gate mlp_in) shared_down_out"
        else:
            text += " + shared_down_out"
    elif any(n.startswith("shared_") and n.endswith(f".{i}") for n in sm.names):
        return  # a shared expert whose output is not offered: the sum cannot be formed

    def compute() -> tuple[Tensor, Tensor, list[Tensor]]:
        terms = [r[n] for n in experts]
        if shared in r:
            s = r[shared]
            if gate is not None:
                g = torch.sigmoid(
                    nn.functional.linear(
                        r[f"mlp_in.{i}"].double(),
                        gate.weight.double(),
                        None if gate.bias is None else gate.bias.double(),
                    )
                )
                s = g * s.double()
            terms.append(s)
        return r[m], _sum64(terms), terms

    ids.append(
        _Identity(m, "expert_out", f"{text} = mlp_out", (m, *experts), tuple(experts), compute)
    )


def _add_final_norm(
    sm: SiteMap,
    r: dict[str, Tensor],
    logits: Tensor,
    real: Tensor,
    ids: list[_Identity],
    tol: float,
) -> None:
    """``logits = T(lm_head(final_norm))``: T is the site map's own (the adapter's logits
    :class:`Scale`, then the soft-cap) when it fits, else the config's transform that fits
    best (so a missing scale shows up as ``logits`` failing while ``final_norm`` passes)."""
    head = sm.model.get_output_embeddings()
    with torch.inference_mode():
        base = head(r["final_norm"])
    own = _own_transform(sm)

    def rel(t: Tensor) -> float:
        res = _errors(logits, t, [logits], real)
        return math.inf if res is None else res[1]

    if rel(own[1](base)) <= tol:
        text, fn = own
    else:
        text, fn = min(
            _logit_transforms(sm.model),
            key=lambda t: rel(t[1](base)),
        )
    ids.append(
        _Identity(
            "final_norm",
            "final_norm",
            f"logits = {text}",
            ("final_norm",),
            ("final_norm",),
            lambda: (logits, fn(base), [logits]),
        )
    )


def _own_transform(sm: SiteMap) -> tuple[str, Callable[[Tensor], Tensor]]:
    """The site map's map from ``lm_head(final_norm)`` to the logits, and its formula."""
    a = sm.adapter.logits_scale
    text = "lm_head(final_norm)"
    if sm.logits_scale is not None and a is not None:
        text += f" x {a.describe()}"
    if sm.softcap:
        text = f"cap*tanh({text}/cap)"
    return text, sm.finish_logits


# verification ---------------------------------------------------------------------------------
def _is_token_shaped(v: Tensor) -> bool:
    return v.dim() >= 3 and tuple(v.shape[:2]) == (BATCH, SEQ)


def verify_sitemap(model: nn.Module, sitemap: SiteMap, tokenizer: Any = None) -> Verification:
    """Check the meaning of every site of ``sitemap`` on a probe forward pass of ``model``.

    Does not change ``sitemap``; :func:`verified_sitemap` applies the result. See the module
    docstring for the identities, the error measure and the blame rule.
    """
    t0 = time.perf_counter()
    res = Verification(
        family=str(getattr(model.config, "model_type", type(model).__name__)),
        dtype="",
        tolerance=0.0,
        n_sites=len(sitemap.names),
    )
    try:
        with _float32(model):
            dtype = model.get_input_embeddings().weight.dtype
            res.dtype, res.tolerance = str(dtype).replace("torch.", ""), TOLERANCE.get(dtype, 3e-2)
            values, rewritten, logits, real = _run_probe(model, sitemap, tokenizer)
            res.checks, res.dropped = _check(sitemap, values, logits, real, res.tolerance)
    except Exception as exc:  # a model the probe cannot run: report, offer the sites unchecked
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        res.error = f"the probe forward pass failed: {first}"
        res.seconds = time.perf_counter() - t0
        return res
    res.inplace = sorted(rewritten, key=sitemap.names.index)
    res.seconds = time.perf_counter() - t0
    return res


def _check(
    sitemap: SiteMap, values: dict[str, Tensor], logits: Tensor | None, real: Tensor, tol: float
) -> tuple[list[Check], dict[str, str]]:
    """The checks of every identity and shape, and the sites to drop (site -> reason)."""
    checks: list[Check] = []
    dropped: dict[str, str] = {}
    for site in sitemap.resolve("all"):  # a hook that never fires: a site that silently is not
        probed = (
            site.name
            if site.mode != "expert" or site.kind == "expert_out"
            else (f"{site.kind}.{site.layer}.0")
        )
        if probed not in values:
            checks.append(
                Check(site.name, site.kind, "produced on the probe", math.inf, math.inf, "fail")
            )
            dropped[site.name] = "produced no value on the probe (its hook never ran)"
    for name, v in values.items():
        if not _is_token_shaped(v):
            shape = "x".join(map(str, v.shape))
            checks.append(
                Check(
                    name,
                    sitemap.get(name).kind,
                    "shape (batch, seq, ...)",
                    float("inf"),
                    float("inf"),
                    "fail",
                    f"{shape}, not {BATCH}x{SEQ}x...",
                )
            )
            dropped[name] = f"its shape {shape} is not (batch, seq, ...) = ({BATCH}, {SEQ}, ...)"
    shaped = {n: v for n, v in values.items() if n not in dropped}
    results: list[tuple[_Identity, Check]] = []
    for ident in _identities(sitemap, shaped, logits, real, tol):
        try:
            lhs, rhs, terms = ident.compute()
            errors = _errors(lhs, rhs, terms, real)
        except Exception as exc:  # e.g. an LM head that needs more than final_norm
            note = type(exc).__name__
            checks.append(Check(ident.site, ident.kind, ident.text, 0.0, 0.0, "skipped", note))
            continue
        if errors is None:  # every token non-finite: the model's values, not the site's meaning
            note = "NaN/Inf on every probe token"
            checks.append(Check(ident.site, ident.kind, ident.text, 0.0, 0.0, "skipped", note))
            continue
        err, rel = errors
        status = "pass" if rel <= tol else "fail"
        check = Check(ident.site, ident.kind, ident.text, err, rel, status, "", ident.involves)
        results.append((ident, check))
        checks.append(check)
    supported = {n for ident, c in results if c.status == "pass" for n in ident.involves}
    for ident, c in results:
        if c.status == "pass":
            continue
        for name in ident.blames:
            if name not in supported and name not in dropped:
                dropped[name] = (
                    f"fails {ident.text}: max abs err {c.max_abs_err:.3g}, "
                    f"rel err {c.rel_err:.3g} > {tol:g} (at {ident.site})"
                )
    return checks, dropped


# applying it, with a cache ---------------------------------------------------------------------
def _cache_file(model: nn.Module, sm: SiteMap, file_hash: str) -> Path:

    sites = [(s.name, s.module, s.mode, s.part, s.scale) for s in sm.resolve("all")]
    run = [
        str(model.get_input_embeddings().weight.dtype),
        input_device(model).type,
        str(getattr(model.config, "_attn_implementation", None)),
    ]
    key = json.dumps([FORMAT, transformers.__version__, torch.__version__, run, sites])
    return cache_root() / "verify" / f"{file_hash[:16]}-{sha256_text(key)[:16]}.json"


def _read_cache(path: Path) -> Verification | None:
    try:
        res = Verification.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    res.cached = True
    res.seconds = 0.0
    return res


def _write_cache(path: Path, res: Verification) -> None:

    try:
        atomic_write_text(path, json.dumps(res.to_dict(), indent=1))
    except OSError as exc:  # the cache is an optimisation
        log.warning("could not write the verification cache %s: %s", path, exc)


def apply_verification(sm: SiteMap, res: Verification) -> None:
    """Drop the failed sites from ``sm`` (one warning per identity) and record ``inplace``.

    Raises :class:`UnsupportedFamilyError` when no residual-stream site remains.
    """
    sm.verification = res
    if res.error is not None:
        warnings.warn(
            f"{res.family}: site meanings not verified ({res.error})",
            SiteDroppedWarning,
            stacklevel=3,
        )
        sm.inplace = frozenset(sm.names)  # unknown: captures copy everything
        return
    sm.drop(res.dropped)
    sm.inplace = frozenset(n for n in res.inplace if n in sm)
    for names in _group(sm.dropped).values():
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        warnings.warn(
            f"{res.family}: not offering {shown}: {sm.dropped[names[0]]}",
            SiteDroppedWarning,
            stacklevel=3,
        )
    if not any(k in sm.kinds() for k in ("embed", "resid_pre", "resid_post")):
        first = next(iter(sm.dropped.values()), "no site")
        raise UnsupportedFamilyError(
            f"no usable site on this {res.family} model: every residual-stream site failed "
            f"its check (first: {first})"
        )


def _group(dropped: dict[str, str]) -> dict[str, list[str]]:
    """Dropped sites grouped by the identity they fail (the text before the first ':')."""
    out: dict[str, list[str]] = {}
    for name, why in dropped.items():
        out.setdefault(why.split(":", 1)[0], []).append(name)
    return out


def verified_sitemap(
    model: nn.Module, tokenizer: Any = None, file_hash: str | None = None
) -> SiteMap:
    """Build ``model``'s SiteMap and verify it (read from the cache when ``file_hash`` is set)."""
    sm = SiteMap(model)
    path = _cache_file(model, sm, file_hash) if file_hash else None
    res = _read_cache(path) if path is not None and path.exists() else None
    if res is None:
        res = verify_sitemap(model, sm, tokenizer)
        if path is not None and res.error is None:
            _write_cache(path, res)
    apply_verification(sm, res)
    return sm
