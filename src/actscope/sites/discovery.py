"""Discovery of unknown families: find the decoder layers, attention, MLP and projections.

Used when no adapter is registered for ``config.model_type``. It maps only what it can
recognise with confidence (layer inputs/outputs, attention and MLP module inputs/outputs,
every Linear inside a layer) and fails with the list of modules it found otherwise.
"""

from __future__ import annotations

from torch import nn

from actscope.errors import UnsupportedFamilyError
from actscope.sites.adapters import Adapter, Hook

_ATTN = ("self_attn", "attention", "attn", "self_attention")
_MLP = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
_NORM = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f")


def discover(model: nn.Module) -> Adapter:
    """Build an :class:`Adapter` for ``model`` by inspecting its module tree."""
    family = str(getattr(model.config, "model_type", type(model).__name__))
    lists = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) > 0
    ]
    if not lists:
        top = ", ".join(n for n, _ in model.named_children())
        raise UnsupportedFamilyError(
            f"no adapter for family '{family}' and no list of decoder layers found; "
            f"top-level modules: {top}"
        )
    layers_name, layers = max(lists, key=lambda x: len(x[1]))
    first = dict(layers[0].named_children())
    attn = next((n for n in _ATTN if n in first), None)
    mlp = next((n for n in _MLP if n in first), None)
    if attn is None or mlp is None:
        raise UnsupportedFamilyError(
            f"no adapter for family '{family}': cannot identify attention/MLP in "
            f"{layers_name}.0, whose modules are: {', '.join(first)}"
        )
    root = layers_name.rsplit(".", 1)[0] if "." in layers_name else ""
    root_children = dict(model.get_submodule(root).named_children()) if root else {}
    norm = next((n for n in _NORM if n in root_children), None)
    if norm is None:
        raise UnsupportedFamilyError(
            f"no adapter for family '{family}': no final norm among {', '.join(root_children)}"
        )
    linears = {
        rel.replace(".", "_"): rel
        for rel, mod in layers[0].named_modules()
        if isinstance(mod, nn.Linear) and rel
    }
    sites = {
        "resid_pre": Hook("", "in"),
        "attn_in": Hook(attn, "in"),
        "attn_out": Hook(attn, "out"),
        "mlp_in": Hook(mlp, "in"),
        "mlp_out": Hook(mlp, "out"),
        "resid_post": Hook("", "out"),
    }
    return Adapter(
        families=(family,),
        layers=layers_name,
        final_norm=f"{root}.{norm}" if root else norm,
        layer_sites=sites,
        linears=linears,
        notes="discovered automatically: resid_mid and norm placement are not mapped",
    )
