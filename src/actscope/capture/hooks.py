"""Plain PyTorch forward hooks for one site, with owned handles.

:func:`attach` registers the hooks that deliver a site's tensor to ``fn`` (and, for editable
sites, put back what ``fn`` returns). It returns the handles it created; the caller removes
exactly those handles (``Handles.remove``), never anyone else's. No hook synchronises with
the host: tensors are passed on as they are, on the device where they were computed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from actscope.errors import ActscopeError
from actscope.sites.sitemap import Site, SiteMap

SiteFn = Callable[[Tensor, Tensor | None], Tensor | None]
"""Called as ``fn(value, mask)``; may return a replacement tensor for editable sites."""


class StopForward(Exception):
    """Raised by the early-stop hook once the last requested layer has run."""


@dataclass
class ForwardState:
    """Per-forward information shared by the hooks of one trace.

    ``mask`` is the (batch, seq) boolean mask of real (non-padding) tokens of the current
    forward pass, or None when every token is real. ``token_shape`` holds, per decoder layer
    path, the (batch, seq) of the hidden states that layer received in this forward pass; a
    per-layer site whose module sees flattened (batch*seq, d) rows is reshaped back with it.
    """

    mask: Tensor | None = None
    token_shape: dict[str, torch.Size] = field(default_factory=dict)
    mask_on: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Handles:
    """The hook handles one owner registered; :meth:`remove` removes exactly those."""

    items: list[RemovableHandle] = field(default_factory=list)

    def add(self, h: RemovableHandle) -> None:
        self.items.append(h)

    def remove(self) -> None:
        while self.items:
            self.items.pop().remove()


class HookOwner(ABC):
    """Base of objects that register hooks with ``attach()`` and remove them with ``remove()``.

    Gives them the context-manager protocol: ``with owner: ...`` attaches on entry and removes
    exactly the owner's hooks on exit, also when the body raises.
    """

    @abstractmethod
    def attach(self) -> Any:
        """Register the hooks; returns the owner."""

    @abstractmethod
    def remove(self) -> None:
        """Remove exactly the hooks this owner registered."""

    def __enter__(self) -> Any:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, str | int]:
    if args and isinstance(args[0], Tensor):
        return args[0], 0
    if isinstance(kwargs.get("hidden_states"), Tensor):
        return kwargs["hidden_states"], "hidden_states"
    for k, v in kwargs.items():
        if isinstance(v, Tensor) and v.is_floating_point():
            return v, k
    raise ActscopeError("cannot find the hidden-states input of a hooked module")


def _select(x: Tensor, part: tuple[int, int] | None) -> Tensor:
    if part is None:
        return x
    i, n = part
    return x.chunk(n, dim=-1)[i]


def _replace(x: Tensor, part: tuple[int, int] | None, new: Tensor) -> Tensor:
    if part is None:
        return new
    i, n = part
    chunks = list(x.chunk(n, dim=-1))
    chunks[i] = new
    return torch.cat(chunks, dim=-1)


def _scaled(value: Tensor, scale: float | None) -> Tensor:
    """The site's value from the module's tensor: ``value x scale`` (``scale`` None: 1)."""
    return value if scale is None else value * scale


def _unscaled(new: Tensor, scale: float | None) -> Tensor:
    """An edited site value mapped back to the module's tensor: ``new / scale``."""
    return new if scale is None else new / scale


def _mask_for(value: Tensor, state: ForwardState, site: Site) -> Tensor | None:
    """The declared padding mask fitted to ``value``'s (batch, seq); None when none is declared.

    A declared mask that cannot be fitted raises: handing None to a consumer would make the
    padding look like real tokens.
    """
    m = state.mask
    if m is None:
        return None
    if m.device != value.device:  # model split over devices: one copy per device
        key = str(value.device)
        if key not in state.mask_on:
            state.mask_on[key] = m.to(value.device, non_blocking=True)
        m = state.mask_on[key]
    if tuple(value.shape[:2]) == tuple(m.shape):
        return m
    # With a KV cache the forward sees only the new tokens: use the mask's last columns.
    if value.dim() >= 2 and value.shape[0] == m.shape[0] and value.shape[1] <= m.shape[1]:
        return m[:, -value.shape[1] :]
    raise ActscopeError(
        f"site '{site.name}' has shape {tuple(value.shape)}, which does not start with the "
        f"(batch, seq) = {tuple(m.shape)} of the declared padding mask"
    )


def attach(
    sitemap: SiteMap, site: Site, fn: SiteFn, state: ForwardState, *, edit: bool = False
) -> Handles:
    """Register hooks delivering ``site`` to ``fn(value, mask)``; return the owned handles.

    With ``edit=True`` a non-None return value of ``fn`` replaces the site's tensor in the
    forward pass (only for sites whose ``mode`` is ``in`` or ``out``). A site with a ``scale``
    delivers ``module tensor x scale`` (then the logits soft-cap, for ``logits``) and puts an
    edit back as ``new / scale``, so an edit means the same on every family.
    """
    if edit and not site.editable:
        raise ActscopeError(
            f"site '{site.name}' is observe-only ({site.mode}); it cannot be edited"
        )
    module = sitemap.module(site)
    handles = Handles()
    flat = _token_layer(sitemap, site)
    if flat is not None:  # the module may see flattened (batch*seq, d) rows (MoE blocks)
        _record_shape(sitemap.model.get_submodule(flat), flat, state, handles)
    if site.mode == "in":
        hook = _in_hook(site, fn, state, edit, flat)
        handles.add(module.register_forward_pre_hook(hook, with_kwargs=True))
    elif site.mode == "out":
        if edit and site.kind == "logits" and sitemap.softcap:
            raise ActscopeError("logits of a soft-capped family are observe-only")
        finish = sitemap.finish_logits if site.kind == "logits" else None
        handles.add(module.register_forward_hook(_out_hook(site, fn, state, edit, finish, flat)))
    elif site.mode == "router":
        _attach_router(sitemap, site, module, fn, state, handles)
    elif site.mode == "expert":
        _attach_expert(sitemap, site, module, fn, state, handles)
    else:
        _attach_derived(sitemap, site, fn, state, handles)
    return handles


def _token_layer(sm: SiteMap, site: Site) -> str | None:
    """Path of the decoder layer holding an in/out site inside it (None for the layer itself).

    Any module inside a layer may receive or return the tokens flattened to (batch*seq, d)
    (MoE blocks and their Linears, Llama 4's whole MoE block, OPT's MLP) or with a singleton
    axis (batch, 1, seq, d); the layer's own input tells the (batch, seq) to restore.
    """
    if site.layer is None or site.mode not in ("in", "out"):
        return None
    layer = f"{sm.adapter.layers}.{site.layer}"
    return layer if site.module.startswith(layer + ".") else None


def _unflatten(value: Tensor, state: ForwardState, flat: str | None) -> Tensor:
    """``value`` as (batch, seq, d) when it holds the layer's tokens in another layout.

    Two layouts are reshaped: 2-D rows (batch*seq, d) (MoE blocks, OPT's MLP) and
    (batch, 1, seq, d) (DeepSeek-V3's kv_b_proj sees its latents with a singleton head axis).
    """
    if flat is None or value.dim() not in (2, 4):
        return value
    shape = state.token_shape.get(flat)
    if shape is None or len(shape) != 2:
        return value
    if value.dim() == 2 and value.shape[0] == shape.numel():
        return value.reshape(*shape, value.shape[-1])
    if value.dim() == 4 and value.shape[1] == 1 and (value.shape[0], value.shape[2]) == shape:
        return value.squeeze(1)
    return value


def _in_hook(
    site: Site, fn: SiteFn, state: ForwardState, edit: bool, flat: str | None = None
) -> Callable[..., Any]:
    def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x, where = _first_tensor(args, kwargs)
        raw = _select(x, site.part)
        value = _scaled(_unflatten(raw, state, flat), site.scale)
        new = fn(value, _mask_for(value, state, site))
        if not edit or new is None:
            return None
        full = _replace(x, site.part, _unscaled(new, site.scale).reshape(raw.shape))
        if isinstance(where, int):
            return (full, *args[1:]), kwargs
        return args, {**kwargs, where: full}

    return hook


def _out_hook(
    site: Site,
    fn: SiteFn,
    state: ForwardState,
    edit: bool,
    finish: Callable[[Tensor], Tensor] | None,
    flat: str | None = None,
) -> Callable[..., Any]:
    def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        x = out[0] if isinstance(out, tuple) else out
        raw = _select(x, site.part)
        value = _unflatten(raw, state, flat)
        value = finish(value) if finish is not None else _scaled(value, site.scale)
        new = fn(value, _mask_for(value, state, site))
        if not edit or new is None:
            return None
        full = _replace(x, site.part, _unscaled(new, site.scale).reshape(raw.shape))
        return (full, *out[1:]) if isinstance(out, tuple) else full

    return hook


def _record_shape(parent: nn.Module, key: str, state: ForwardState, handles: Handles) -> None:
    def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x, _ = _first_tensor(args, kwargs)
        state.token_shape[key] = x.shape[:-1]

    handles.add(parent.register_forward_pre_hook(pre, with_kwargs=True))


def _attach_router(
    sm: SiteMap, site: Site, module: nn.Module, fn: SiteFn, state: ForwardState, handles: Handles
) -> None:
    block = site.module.rsplit(".", 1)[0]
    _record_shape(sm.model.get_submodule(block), block, state, handles)

    def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        logits = out[site.output] if isinstance(out, tuple) else out
        value = logits.reshape(*state.token_shape[block], logits.shape[-1])
        fn(value, _mask_for(value, state, site))

    handles.add(module.register_forward_hook(hook))


def _attach_expert(
    sm: SiteMap, site: Site, module: nn.Module, fn: SiteFn, state: ForwardState, handles: Handles
) -> None:
    block = site.module.rsplit(".", 1)[0]
    _record_shape(sm.model.get_submodule(block), block, state, handles)
    e = int(site.expert or 0)

    def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        names = ("hidden_states", "top_k_index", "top_k_weights")
        vals = dict(zip(names, args, strict=False)) | {k: kwargs[k] for k in names if k in kwargs}
        x, idx, w = vals["hidden_states"], vals["top_k_index"], vals["top_k_weights"]
        hit = idx == e
        routed = hit.any(-1)
        if site.kind == "expert_in":
            value = x
        else:
            gate, up = nn.functional.linear(x, mod.gate_up_proj[e]).chunk(2, dim=-1)
            if site.kind == "expert_gate":
                value = gate
            else:
                act = mod.act_fn(gate) * up
                if site.kind == "expert_act":
                    value = act
                else:
                    weight = (w * hit).sum(-1, keepdim=True).to(act.dtype)
                    value = _scaled(
                        nn.functional.linear(act, mod.down_proj[e]) * weight, site.scale
                    )
        shape = state.token_shape[block]
        value = value.reshape(*shape, value.shape[-1])
        routed = routed.reshape(shape)
        m = _mask_for(value, state, site)
        fn(value, routed if m is None else routed & m)

    handles.add(module.register_forward_hook(hook, with_kwargs=True))


def _attach_derived(
    sm: SiteMap, site: Site, fn: SiteFn, state: ForwardState, handles: Handles
) -> None:
    """resid_mid on parallel-residual families: resid_pre + attn_out of the same layer."""
    layer = sm.layers[int(site.layer or 0)]
    attn_site = sm.get(f"attn_out.{site.layer}")
    attn = sm.module(attn_site)
    box: dict[str, Tensor] = {}

    def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        box["pre"], _ = _first_tensor(args, kwargs)

    def post(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        a = out[0] if isinstance(out, tuple) else out
        value = box.pop("pre") + _scaled(a, attn_site.scale)
        fn(value, _mask_for(value, state, site))

    handles.add(layer.register_forward_pre_hook(pre, with_kwargs=True))
    handles.add(attn.register_forward_hook(post))
