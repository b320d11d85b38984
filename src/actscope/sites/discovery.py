"""Discovery of families without an adapter: structure proposes, a probe forward pass decides.

Used when no adapter is registered for ``config.model_type``. Nothing here is keyed on a
family name; the steps are:

1. **Structure.** The decoder layers are the longest ``ModuleList``. In every layer (all of
   them: hybrids differ by layer) the token mixers are the innermost modules whose class says
   what they are (``*Attention*`` -> attention, ``*Mamba*``/``*Mixer*`` -> SSM,
   ``*DeltaNet*``/``*LinearAttention*`` -> linear attention, ``*Conv*`` -> short convolution);
   the MLP is the outermost remaining weighted module that returns the hidden size (or, when
   the projections sit directly in the layer as in OPT, its first and last Linear); norms are
   the modules whose class name contains ``Norm``.
2. **Probe.** One forward pass on a padded two-row probe records every module's input and
   output (cloned at hook time) and when it started and ended.
3. **Checking.** Each branch (mixer or MLP) has candidate tensors for "what it adds to the
   residual": the module's output, the output of a norm that runs after it (post-norm), the
   output of its last projection (residual added inside the module). A candidate set is kept
   only if ``resid_post == resid_mid + mlp_out`` and ``resid_mid == resid_pre + sum(mixers)``
   hold on the probe (resid_mid is the input of a module that runs between the mixers and the
   MLP, or derived as resid_pre + attn_out when none holds it: parallel residual). A branch
   scaled outside any module is fitted with one least-squares factor per branch; its hook
   carries that factor as a measured :class:`Scale` (capture multiplies by it). A branch that
   is the sum of several modules' outputs is not offered; the reason is recorded in
   ``Adapter.dropped``.
4. **Names.** Linear layers get the shared names (``q k v o qkv gate up down gate_up``, with
   ``shared_`` inside shared experts, the mixer kind as prefix inside SSM/conv mixers) when their
   attribute name and shape say their role; ``mlp_gate``/``mlp_act`` are checked against
   ``act(gate) * up == down_in`` with the config's activation when it is known.
5. **Routers.** An MoE block's router is the child with an output that has one column per
   expert; the output (of a returned tuple) that ``W mlp_in (+ b)`` reproduces is offered.
6. **Final check.** The resulting SiteMap is verified by :mod:`actscope.sites.verify` on its
   probe; any site that still fails is dropped with the identity and its error.

It fails with one line naming what it found when no decoder layers or no final norm exist.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from actscope.errors import UnsupportedFamilyError
from actscope.sites.adapters.base import Adapter, Hook, Scale
from actscope.sites.vocabulary import LAYER_KINDS, MIXER_KINDS

_MIXER_WORDS: list[tuple[str, tuple[str, ...]]] = [
    ("linear_attention", ("deltanet", "linearattention", "lightning", "retention")),
    ("ssm", ("mamba", "mixer", "ssm")),
    ("conv", ("conv", "shortconv")),
    ("attention", ("attention", "attn")),
]
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z]+")
_ATTN_ROLES: dict[str, tuple[str, ...]] = {
    "q": ("q_proj", "q", "query", "wq", "q_lin"),
    "k": ("k_proj", "k", "key", "wk", "k_lin"),
    "v": ("v_proj", "v", "value", "wv", "v_lin"),
    "o": ("o_proj", "out_proj", "dense", "o", "wo", "c_proj", "out_lin"),
    "qkv": ("qkv_proj", "qkv", "query_key_value", "c_attn", "wqkv", "w_pack"),
    "q_a": ("q_a_proj",),  # multi-head latent attention (DeepSeek): low-rank q and kv
    "q_b": ("q_b_proj",),
    "kv_a": ("kv_a_proj_with_mqa", "kv_a_proj"),
    "kv_b": ("kv_b_proj",),
}
_MLP_ROLES: dict[str, tuple[str, ...]] = {
    "gate": ("gate_proj", "w1", "wi_0", "fc_gate"),
    "up": ("up_proj", "w3", "fc1", "c_fc", "fc_in", "dense_h_to_4h", "wi", "wi_1"),
    "down": ("down_proj", "w2", "fc2", "c_proj", "fc_out", "dense_4h_to_h", "wo"),
    "gate_up": ("gate_up_proj", "w12"),
}
_TOL = 1e-5


@dataclass
class _Rec:
    """One module call on the probe: its first input/output tensors, start and end order.

    ``outs`` holds every tensor of a returned tuple (``out`` is the first).
    """

    start: int
    end: int = -1
    inp: Tensor | None = None
    out: Tensor | None = None
    outs: tuple[Tensor | None, ...] = ()


@dataclass
class _Layer:
    """What discovery decided for one layer: hooks by kind, and reasons for kinds not offered."""

    sites: dict[str, Hook] = field(default_factory=dict)
    linears: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    derived_mid: bool = False
    router: str | None = None
    router_output: int = 0
    experts: str | None = None


def discover(model: nn.Module) -> Adapter:
    """Build an :class:`Adapter` for ``model`` by inspecting and probing it (module docstring)."""
    family = str(getattr(model.config, "model_type", type(model).__name__))
    layers_name, layers = _find_layers(model, family)
    if not any(_mixer_kind(m) for layer in layers for m in layer.modules()):
        raise UnsupportedFamilyError(
            f"no adapter for family '{family}': cannot identify a token mixer (attention, SSM, "
            f"linear attention, convolution) in {layers_name}.0, whose modules are: "
            f"{', '.join(n for n, _ in layers[0].named_children())}"
        )
    recs, logits = _probe(model, layers_name)
    head = model.get_output_embeddings()
    head_name = next(n for n, m in model.named_modules() if m is head)
    final_norm = _final_norm(model, layers_name, recs, head_name, family)
    per_layer = [
        _discover_layer(model, f"{layers_name}.{i}", layer, recs) for i, layer in enumerate(layers)
    ]
    adapter = _merge(family, layers_name, final_norm, per_layer, model, recs, head_name, logits)
    return _verified(model, adapter)


# structure ------------------------------------------------------------------------------------
def _find_layers(model: nn.Module, family: str) -> tuple[str, nn.ModuleList]:
    lists = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0
    ]
    if not lists:
        top = ", ".join(n for n, _ in model.named_children())
        raise UnsupportedFamilyError(
            f"no adapter for family '{family}' and no list of decoder layers found; "
            f"top-level modules: {top}"
        )
    name, layers = max(lists, key=lambda x: (len(x[1]), -x[0].count(".")))
    return name, layers  # type: ignore[return-value]


def _mixer_kind(mod: nn.Module) -> str | None:
    if not any(_weighted(c) for c in mod.children()):
        return None  # a projection or convolution itself, not a mixer holding them
    words = [w.lower() for w in _WORD.findall(type(mod).__name__)]
    pairs = {a + b for a, b in itertools.pairwise(words)}
    for kind, names in _MIXER_WORDS:
        if any(n in words or n in pairs for n in names):
            return kind
    return None


def _dims(mod: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a Linear, or of a transposed-weight Conv1D (GPT-2 style)."""
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    w = getattr(mod, "weight", None)
    if type(mod).__name__ == "Conv1D" and isinstance(w, Tensor) and w.dim() == 2:
        return int(w.shape[0]), int(w.shape[1])
    return None


def _weighted(mod: nn.Module) -> bool:
    return any(p.dim() >= 2 for p in mod.parameters())


def _is_norm(mod: nn.Module) -> bool:
    return "norm" in type(mod).__name__.lower()


def _inside(rel: str, parents: list[str]) -> bool:
    return any(rel.startswith(p + ".") for p in parents)


# probe ------------------------------------------------------------------------------------------
def _first(x: Any) -> Tensor | None:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], Tensor):
        return x[0]
    return None


def _probe(model: nn.Module, layers_name: str) -> tuple[dict[str, _Rec], Tensor]:
    """Record every module's first input/output during one probe forward pass."""
    from actscope.capture.runner import forward
    from actscope.sites.verify import probe_ids  # verify imports the SiteMap, which imports us

    recs: dict[str, _Rec] = {}
    counter = itertools.count()
    handles = []

    def pre(name: str) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name in recs:
                return
            x = args[0] if args and isinstance(args[0], Tensor) else kwargs.get("hidden_states")
            if x is None:
                x = next((v for v in kwargs.values() if isinstance(v, Tensor)), None)
            recs[name] = _Rec(next(counter), inp=x.detach().clone() if x is not None else None)

        return hook

    def post(name: str) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            r = recs.get(name)
            if r is not None and r.end < 0:
                o = _first(out)
                r.end, r.out = next(counter), o.detach().clone() if o is not None else None
                if isinstance(out, tuple) and len(out) > 1:
                    r.outs = tuple(
                        x.detach().clone() if isinstance(x, Tensor) else None for x in out
                    )

        return hook

    try:
        for name, mod in model.named_modules():
            if name:
                handles.append(mod.register_forward_pre_hook(pre(name), with_kwargs=True))
                handles.append(mod.register_forward_hook(post(name)))
        ids, mask = probe_ids(model, None)
        dev = next(model.parameters()).device
        with torch.inference_mode():
            logits = forward(model, ids.to(dev), mask.to(dev)).logits
    finally:
        for h in handles:
            h.remove()
    return recs, logits


def _err(a: Tensor | None, b: Tensor | None) -> float:
    from actscope.sites.verify import rel_error

    if a is None or b is None:
        return float("inf")
    return rel_error(a, b)


# one layer ------------------------------------------------------------------------------------
def _discover_layer(model: nn.Module, base: str, layer: nn.Module, recs: dict[str, _Rec]) -> _Layer:
    res = _Layer()
    lrec = recs.get(base)
    if lrec is None or lrec.inp is None or lrec.out is None:
        return res
    pre, post = lrec.inp, lrec.out
    d, tokens = pre.shape[-1], tuple(pre.shape[:2])
    subs = {rel: m for rel, m in layer.named_modules() if rel and f"{base}.{rel}" in recs}

    def rec(rel: str) -> _Rec:
        return recs[f"{base}.{rel}"]

    kinds = {rel: k for rel, m in subs.items() if (k := _mixer_kind(m))}
    mixers = [r for r in kinds if not any(o.startswith(r + ".") for o in kinds)]
    mixers = [r for r in mixers if not _inside(r, [o for o in mixers if o != r])]
    mixers.sort(key=lambda r: rec(r).start)
    norms = [r for r, m in subs.items() if _is_norm(m) and not _inside(r, mixers)]
    mlps, lin_mlp = _find_mlp(subs, mixers, norms, d, rec)
    with_experts = [
        m for m in mlps if any("expert" in type(x).__name__.lower() for x in subs[m].modules())
    ]
    mlp = (with_experts or mlps or [None])[0]
    res.sites["resid_pre"] = Hook("", "in")
    res.sites["resid_post"] = Hook("", "out")
    mixer_of_kind: dict[str, str] = {}
    for r in mixers:
        mixer_of_kind.setdefault(kinds[r], r)
    for kind, r in mixer_of_kind.items():
        res.sites[MIXER_KINDS[kind][0]] = Hook(r, "in")
    mixers = list(mixer_of_kind.values())
    first = mlps[0] if mlps else (lin_mlp[0] if lin_mlp else None)
    if first is not None:
        res.sites["mlp_in"] = Hook(first, "in")
    mlp_start = rec(first).start if first else 1 << 30

    def branch_candidates(r: str, until: int, inner_of: str | None) -> list[Hook]:
        """Tensors that may be what branch r adds: its output, a norm after it, its last proj."""
        end = rec(r).end
        out = [Hook(r, "out")]
        out += [Hook(n, "out") for n in norms if end < rec(n).start < until]
        lins = [
            x
            for x, m in subs.items()
            if (dims := _dims(m)) and x.startswith((inner_of or r) + ".") and dims[1] == d
        ]
        if lins:
            out.append(Hook(max(lins, key=lambda x: rec(x).end), "out"))
        return out

    def value(h: Hook) -> Tensor | None:
        """Probe value of a hook as (batch, seq, d); flattened rows are reshaped, as capture does."""
        r = recs.get(f"{base}.{h.module}" if h.module else base)
        v = None if r is None else (r.inp if h.port == "in" else r.out)
        if v is None or v.shape[-1] != d:
            return None
        if tuple(v.shape[:2]) == tokens:
            return v
        if v.dim() == 2 and v.shape[0] == tokens[0] * tokens[1]:  # (batch*seq, d) rows
            return v.reshape(pre.shape)
        return None

    # One candidate tuple per combination of the MLP branches' candidates (several MLP modules
    # add to the residual side by side in some families, e.g. a MoE block beside a shared MLP).
    mlp_cands: list[tuple[Hook, ...]] = []
    if mlps:
        mlp_cands = list(itertools.product(*[branch_candidates(m, 1 << 30, None) for m in mlps]))
    elif lin_mlp is not None:
        mlp_cands = [(Hook(lin_mlp[1], "out"),)]
    mixer_cands = [
        branch_candidates(
            r, min([rec(o).start for o in mixers if rec(o).start > rec(r).end] + [mlp_start]), None
        )
        for r in mixers
    ]
    last_mixer_end = max((rec(r).end for r in mixers), default=-1)
    mid_cands = [Hook(n, "in") for n in norms if last_mixer_end < rec(n).start <= mlp_start]
    if mlps:
        mid_cands.append(Hook(mlps[0], "in"))

    def values(hooks: tuple[Hook, ...] | list[Hook]) -> list[Tensor] | None:
        vals = [value(h) for h in hooks]
        return None if any(v is None for v in vals) else vals  # type: ignore[return-value]

    # Each search tries exact sums first, then a fit with one scalar per branch (scaled branch).
    mid, mlp_out, mlp_coefs = None, None, [1.0]
    for exact, (m_h, c_t) in itertools.product(
        (True, False), itertools.product(mid_cands, mlp_cands)
    ):
        mv, cvals = value(m_h), values(c_t)
        coefs = None if mv is None or cvals is None else _fit(mv, post, cvals, exact)
        if coefs is not None:
            mid, mlp_out, mlp_coefs = m_h, c_t, coefs
            break
    chosen: list[Hook] | None = None
    coefs_mix: list[float] = []
    for exact, combo in itertools.product((True, False), itertools.product(*mixer_cands)):
        vals = values(combo)
        if vals is None:
            continue
        if mid is not None:
            mv = value(mid)
            coefs = None if mv is None else _fit(pre, mv, vals, exact)
            if coefs is not None:
                chosen, coefs_mix = list(combo), coefs
                break
            continue
        for c_t in mlp_cands or [()]:
            cvals = values(c_t)
            coefs = None if cvals is None else _fit(pre, post, [*vals, *cvals], exact)
            if coefs is not None:
                n = len(vals)
                chosen, coefs_mix = list(combo), coefs[:n]
                mlp_out, mlp_coefs = (c_t, coefs[n:]) if c_t else (None, [1.0])
                break
        if chosen:
            break
    if mid is not None:
        res.sites["resid_mid"] = mid
    if mlp_out is not None and len(mlp_out) == 1:
        res.sites["mlp_out"] = _with_scale(mlp_out[0], mlp_coefs[0])
    elif mlp_out is not None:
        parts = ", ".join(f"{c:g} x {h.module}" for h, c in zip(mlp_out, mlp_coefs, strict=True))
        res.dropped["mlp_out"] = f"the MLP part is the sum {parts}: no single tensor holds it"
    elif mlp_cands:
        res.dropped["mlp_out"] = "no tensor of the layer equals resid_post - resid_mid"
    for r, h, c in zip(mixers, chosen or [], coefs_mix, strict=False):
        res.sites[MIXER_KINDS[kinds[r]][1]] = _with_scale(h, c)
    if chosen is None:
        for r in mixers:
            res.dropped[MIXER_KINDS[kinds[r]][1]] = (
                "no module output, even scaled, is what the mixer adds to the residual"
            )
    if not mlp_cands and mixers:
        for kind in ("resid_mid", "mlp_in", "mlp_out"):
            res.dropped[kind] = "the layer has no MLP: the mixer output goes to resid_post"
        return _finish(model, res, subs, mixers, kinds, mlp, lin_mlp, d, tokens, rec, recs, base)
    if mid is None and chosen and "attn_out" in res.sites and len(mixers) == 1:
        res.derived_mid = True
    elif mid is None and mixers:
        res.dropped["resid_mid"] = "no module input holds it and it cannot be derived"
    return _finish(model, res, subs, mixers, kinds, mlp, lin_mlp, d, tokens, rec, recs, base)


def _finish(
    model: nn.Module,
    res: _Layer,
    subs: dict[str, nn.Module],
    mixers: list[str],
    kinds: dict[str, str],
    mlp: str | None,
    lin_mlp: tuple[str, str] | None,
    d: int,
    tokens: tuple[int, ...],
    rec: Any,
    recs: dict[str, _Rec],
    base: str,
) -> _Layer:
    """Router, Linear names and the MLP's gate/act sites of one layer."""
    _router(res, subs, mlp, rec)
    _name_linears(res, subs, mixers, kinds, mlp, d, tokens, rec)

    def raw(rel: str | None, port: str) -> Tensor | None:
        r = recs.get(f"{base}.{rel}") if rel else None
        return None if r is None else (r.inp if port == "in" else r.out)

    _mlp_internals(model, res, mlp, lin_mlp, raw)
    return res


def _fit(base: Tensor, target: Tensor, vals: list[Tensor], exact: bool) -> list[float] | None:
    """Coefficients c with target == base + sum_j c_j vals_j on the probe, or None.

    ``exact``: all c_j = 1 and the sum matches within the identity tolerance (measured on the
    sum, not on target - base, whose cancellation would lose precision next to large residual
    entries). Otherwise one least-squares scalar per branch (a branch scaled outside any
    module), rounded to 6 digits, accepted when base + sum_j c_j vals_j matches within 1e-4.
    """
    if exact:
        return [1.0] * len(vals) if _err(_total(base, vals), target) <= _TOL else None
    a = torch.stack([v.double().flatten() for v in vals], dim=1)
    y = (target.double() - base.double()).flatten().unsqueeze(1)
    c = torch.linalg.lstsq(a, y).solution
    if _err(base.double() + (a @ c).reshape(target.shape), target.double()) > 1e-4:
        return None
    return [round(float(x), 6) for x in c.squeeze(1)]


def _total(base: Tensor, vals: list[Tensor]) -> Tensor:
    out = base
    for v in vals:
        out = out + v
    return out


def _with_scale(h: Hook, coef: float) -> Hook:
    """``h``, carrying the measured factor when the branch is scaled outside any module.

    The factor is rounded to 5 significant digits (the fit's float32 noise is below that), so
    every layer of a family measures the same one.
    """
    coef = float(f"{coef:.5g}")
    return h if coef == 1.0 else replace(h, scale=Scale(value=coef))


def _find_mlp(
    subs: dict[str, nn.Module], mixers: list[str], norms: list[str], d: int, rec: Any
) -> tuple[list[str], tuple[str, str] | None]:
    """The MLP modules (in execution order), or (first, last) Linear when the projections sit
    in the layer itself (OPT)."""
    cands = []
    for r, m in subs.items():
        if (
            r in mixers
            or _inside(r, mixers)
            or r in norms
            or _dims(m) is not None
            or isinstance(m, nn.Embedding)
        ):
            continue
        if any(x.startswith(r + ".") for x in mixers) or not _weighted(m):
            continue
        out = rec(r).out
        if (
            out is not None
            and out.shape[-1] == d
            and sum(p.dim() >= 2 for p in m.parameters()) >= 2
        ):
            cands.append(r)
    top = [r for r in cands if not _inside(r, cands)]
    if top:
        return sorted(top, key=lambda r: rec(r).start), None
    lins = [r for r, m in subs.items() if _dims(m) and not _inside(r, mixers) and "." not in r]
    dims = {r: _dims(subs[r]) or (0, 0) for r in lins}
    ups = [r for r in lins if dims[r][0] == d and dims[r][1] != d]
    downs = [r for r in lins if dims[r][1] == d and dims[r][0] != d]
    if ups and downs:
        return [], (min(ups, key=lambda r: rec(r).start), max(downs, key=lambda r: rec(r).end))
    return [], None


def _role(table: dict[str, tuple[str, ...]], leaf: str) -> str | None:
    leaf = leaf.lower()
    return next((role for role, names in table.items() if leaf in names), None)


def _name_linears(
    res: _Layer,
    subs: dict[str, nn.Module],
    mixers: list[str],
    kinds: dict[str, str],
    mlp: str | None,
    d: int,
    tokens: tuple[int, ...],
    rec: Any,
) -> None:
    """Shared names for Linear layers whose role is recognisable (module docstring, step 4)."""
    for rel, m in subs.items():
        dims = _dims(m)
        router = res.router
        if (
            dims is None
            or ".experts." in f".{rel}."
            or (router and f"{rel}.".startswith(router + "."))
        ):
            continue
        d_in, d_out = dims
        leaf = rel.rsplit(".", 1)[-1]
        owner = next((x for x in mixers if rel.startswith(x + ".")), None)
        name: str | None = None
        if owner is not None and kinds[owner] == "attention":
            name = _role(_ATTN_ROLES, leaf)
            if (name in ("q", "k", "v", "qkv") and d_in != d) or (name == "o" and d_out != d):
                name = None
        elif owner is not None:
            name = f"{MIXER_KINDS[kinds[owner]][0].rsplit('_', 1)[0]}_{leaf}"
        elif mlp is None or rel.startswith(mlp + ".") or "." not in rel:
            role = _role(_MLP_ROLES, leaf)
            if (role in ("gate", "up", "gate_up") and d_in != d) or (role == "down" and d_out != d):
                role = None
            if role and "shared" in rel:
                role = f"shared_{role}"
            name = role
        if name is None or (name in res.linears and res.linears[name] != rel):
            name = rel.replace(".", "_")
        res.linears[name] = rel
        x = rec(rel).inp
        # Capture reshapes (batch*seq, d) rows and (batch, 1, seq, d) inside a layer.
        flat_ok = x is not None and (
            (x.dim() == 2 and x.shape[0] == tokens[0] * tokens[1])
            or (x.dim() == 4 and x.shape[1] == 1 and (x.shape[0], x.shape[2]) == tokens)
        )
        if x is None or (tuple(x.shape[:2]) != tokens and not flat_ok):
            for port in ("in", "out"):
                res.dropped[f"{name}_{port}"] = (
                    f"applied to rows of shape {tuple(x.shape) if x is not None else None}, "
                    "not (batch, seq, ...)"
                )


def _mlp_internals(
    model: nn.Module, res: _Layer, mlp: str | None, lin_mlp: tuple[str, str] | None, raw: Any
) -> None:
    """mlp_gate and mlp_act of a dense MLP, checked against act(gate) * up == down_in."""
    lin = {k: v for k, v in res.linears.items() if mlp is None or v.startswith(mlp + ".")}
    down = lin.get("down") or (lin_mlp[1] if lin_mlp else None)
    if down is None or "router_logits" in res.sites:
        return
    act = _activation(model.config)
    cands: list[Hook] = []
    if "gate" in lin:
        cands = [Hook(lin["gate"], "out")]
    elif "gate_up" in lin:
        cands = [Hook(lin["gate_up"], "out", part=(0, 2)), Hook(lin["gate_up"], "out", part=(1, 2))]
    elif "up" in lin or lin_mlp:
        cands = [Hook(lin.get("up") or lin_mlp[0], "out")]  # type: ignore[index]
    res.sites["mlp_act"] = Hook(down, "in")
    if not cands:
        return
    if act is None:
        res.sites["mlp_gate"] = cands[0]
        return
    for h in cands:
        if _gate_ok(res, h, down, act, raw):
            res.sites["mlp_gate"] = h
            return
    res.dropped["mlp_gate"] = "act(gate) * up does not reproduce the down projection's input"


def _gate_ok(res: _Layer, gate: Hook, down: str, act: Any, raw: Any) -> bool:
    g, x = raw(gate.module, "out"), raw(down, "in")
    if g is None or x is None:
        return False
    if gate.part is not None:
        a, b = g.chunk(2, dim=-1)
        g, up = (a, b) if gate.part[0] == 0 else (b, a)
        return _err(act(g) * up, x) <= 1e-4
    up_mod = res.linears.get("up")
    u = raw(up_mod, "out") if up_mod and up_mod != gate.module else None
    return _err(act(g) * u if u is not None else act(g), x) <= 1e-4


def _activation(cfg: Any) -> Any:
    from transformers.activations import ACT2FN

    for attr in ("hidden_act", "hidden_activation", "activation_function", "ffn_act_fn"):
        name = getattr(cfg, attr, None)
        if isinstance(name, str) and name in ACT2FN:
            return ACT2FN[name]
    return None


def _router(res: _Layer, subs: dict[str, nn.Module], mlp: str | None, rec: Any) -> None:
    """Router and experts of an MoE block (module docstring, step 5)."""
    if mlp is None:
        return
    children = {
        r: m
        for r, m in subs.items()
        if r.startswith(mlp + ".") and r.count(".") == mlp.count(".") + 1
    }
    experts = next(
        (
            r
            for r, m in children.items()
            if "expert" in type(m).__name__.lower() and "shared" not in r
        ),
        None,
    )
    if experts is None:
        return
    em = children[experts]
    n = (
        len(em)
        if isinstance(em, nn.ModuleList)
        else next((p.shape[0] for p in em.parameters() if p.dim() == 3), 0)
    )
    if not n:
        return
    from actscope.sites.verify import router_weight

    for r, m in children.items():
        outs = rec(r).outs or (rec(r).out,)
        cands = [j for j, o in enumerate(outs) if o is not None and o.shape[-1] == n]
        if r == experts or "shared" in r or not cands:
            continue
        res.router = r
        w, x = router_weight(m), rec(mlp).inp
        z = None
        if w is not None and x is not None:
            with torch.inference_mode():
                z = nn.functional.linear(x.to(w[0].dtype), *w)
        # The output that holds the logits: W mlp_in (+ b), whatever its place in the tuple.
        good = [
            j
            for j in cands
            if z is not None
            and z.numel() == outs[j].numel()  # type: ignore[union-attr]
            and _err(z.reshape(outs[j].shape).to(outs[j].dtype), outs[j]) <= 1e-4  # type: ignore[union-attr]
        ]
        res.router_output = good[0] if good else cands[0]
        if not good:
            res.dropped["router_logits"] = "no output of the router is W mlp_in (+ b)"
        res.sites["router_logits"] = Hook(r, "out")
        break
    gu, dn = getattr(em, "gate_up_proj", None), getattr(em, "down_proj", None)
    if (
        isinstance(gu, Tensor)
        and isinstance(dn, Tensor)
        and gu.dim() == 3
        and dn.dim() == 3
        and gu.shape[1] == 2 * dn.shape[2]
        and hasattr(em, "act_fn")
    ):
        res.experts = experts


# merge ----------------------------------------------------------------------------------------
def _merge(
    family: str,
    layers_name: str,
    final_norm: str,
    per_layer: list[_Layer],
    model: nn.Module,
    recs: dict[str, _Rec],
    head_name: str,
    logits: Tensor,
) -> Adapter:
    """One table for all layers: each kind's most common hook; per-layer exceptions dropped."""
    sites: dict[str, Hook] = {}
    for kind in {k for lay in per_layer for k in lay.sites}:
        if kind == "router_logits":
            continue
        hooks = Counter(lay.sites[kind] for lay in per_layer if kind in lay.sites)
        sites[kind] = hooks.most_common(1)[0][0]
    linears: dict[str, str] = {}
    for lay in per_layer:
        for name, rel in lay.linears.items():
            linears.setdefault(name, rel)
    dropped: dict[str, str] = {}
    modules = dict(model.named_modules())
    for i, lay in enumerate(per_layer):
        base = f"{layers_name}.{i}"
        for kind, h in sites.items():
            here = f"{base}.{h.module}" if h.module else base
            if here in modules and lay.sites.get(kind) != h:
                dropped[f"{kind}.{i}"] = lay.dropped.get(
                    kind, "discovery found no tensor for it here"
                )
        for name, reason in lay.dropped.items():
            if name not in sites:
                dropped[f"{name}.{i}"] = reason
    routers = Counter((lay.router, lay.router_output) for lay in per_layer if lay.router)
    router, router_output = routers.most_common(1)[0][0] if routers else (None, 0)
    experts = next((lay.experts for lay in per_layer if lay.experts), None)
    derived = any(lay.derived_mid for lay in per_layer) and "resid_mid" not in sites
    logits_scale, logit_drop = _logits_scale(model, recs, head_name, logits)
    if logit_drop:
        dropped["logits"] = logit_drop
    ordered = {k: sites[k] for k in sorted(sites, key=_kind_order)}
    return Adapter(
        families=(family,),
        layers=layers_name,
        final_norm=final_norm,
        layer_sites=ordered,
        linears=linears,
        router=router,
        router_output=router_output,
        experts=experts,
        parallel_residual=(lambda cfg: True) if derived else (lambda cfg: False),
        logits_scale=logits_scale,
        dropped=dropped,
        notes="discovered by structure and checked on a probe forward pass",
    )


def _kind_order(kind: str) -> int:
    order = list(LAYER_KINDS)
    return order.index(kind) if kind in order else len(order)


def _final_norm(
    model: nn.Module, layers_name: str, recs: dict[str, _Rec], head_name: str, family: str
) -> str:
    """The norm-like module whose output is what the unembedding reads."""
    target = recs.get(head_name)
    norms = [
        n
        for n, m in model.named_modules()
        if _is_norm(m) and not n.startswith(layers_name + ".") and n in recs
    ]
    for n in sorted(norms, key=lambda n: -recs[n].end):
        if target is not None and _err(recs[n].out, target.inp) == 0.0:
            return n
    raise UnsupportedFamilyError(
        f"no adapter for family '{family}': no norm outside the layers produces the input of "
        f"the unembedding; norms found: {', '.join(norms) or 'none'}"
    )


def _logits_scale(
    model: nn.Module, recs: dict[str, _Rec], head_name: str, logits: Tensor
) -> tuple[Scale | None, str | None]:
    """A constant factor between the lm_head output and the model's logits, if any."""
    out = recs[head_name].out
    if out is None or out.shape != logits.shape:
        return None, "the lm_head output does not have the shape of the model's logits"
    cap = getattr(model.config, "final_logit_softcapping", None)
    z = torch.tanh(out / cap) * cap if cap else out
    if _err(z, logits) <= _TOL:
        return None, None
    ratio = float((logits.double() * out.double()).sum() / (out.double() ** 2).sum())
    if _err(out * ratio, logits) <= 1e-4:
        return Scale(value=round(ratio, 6)), None
    return None, "the model transforms the lm_head output outside any module"


def _verified(model: nn.Module, adapter: Adapter) -> Adapter:
    """The discovered table, with every site that fails verification on the probe dropped."""
    from actscope.sites.sitemap import SiteMap
    from actscope.sites.verify import verify_sitemap

    res = verify_sitemap(model, SiteMap(model, adapter))
    if res.error is not None or not res.dropped:
        return adapter
    return replace(adapter, dropped={**adapter.dropped, **res.dropped})
