"""SmoothQuant: move activation outliers into the weights, folded exactly, undone on exit.

For a group of Linear layers reading the same activation ``X`` (input channels ``j``), the
smoothing factor is ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (``max|W_j|`` over the
column ``j`` of every Linear of the group); channels with a zero activation or weight maximum
keep ``s_j = 1``, and ``s`` is clamped to ``>= 1e-5``. The activation is divided by ``s`` where
it is produced and the weight columns are multiplied by ``s``, so ``X W^T`` is unchanged in
exact arithmetic:

* q/k/v read the attention pre-norm: its weight becomes ``w / s`` (Gemma 2/3 normalise with
  ``x * (1 + w)``: the ``1 + w`` factor is divided, ``w' = (1 + w) / s - 1``);
* gate/up read the MLP pre-norm (``post_attention_layernorm`` on Llama-like families,
  ``pre_feedforward_layernorm`` on Gemma 2/3), folded the same way;
* o_proj reads the attention output, a linear function of ``v``: the rows of ``v_proj`` (and
  its bias) are divided by ``s``. With grouped-query attention one ``v`` channel feeds the
  same channel of every query head of its group, so ``s`` is computed per ``v`` channel from
  the maxima over that group's heads and repeated across them;
* down_proj reads ``act(gate) * up``, linear in ``up``: the rows of ``up_proj`` are divided.

Folding is done in float32 and stored in the model's dtype (bfloat16 rounding of the folded
weights perturbs the unquantized model slightly; :func:`smoothed` restores the originals).
Families: Llama, Mistral, Qwen2/3 and Gemma 2/3; others raise :class:`SmoothingError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from actscope.capture.trace import sitemap_of
from actscope.errors import ActscopeError


class SmoothingError(ActscopeError):
    """SmoothQuant cannot be folded into this model (family or statistics missing)."""


@dataclass(frozen=True)
class Fold:
    """One smoothing fold of a layer: ``producer`` divides, ``consumers`` multiply.

    ``how`` is ``norm`` (weight * x), ``norm1p`` (x * (1 + weight)) or ``rows`` (output rows
    of a Linear). ``heads = (n_heads, n_kv_heads, head_dim)`` for the v -> o fold.
    """

    producer: str
    consumers: tuple[str, ...]
    how: str
    heads: tuple[int, int, int] | None = None


_LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")
_GEMMA_NORMS = ("input_layernorm", "pre_feedforward_layernorm")
FAMILIES: dict[str, tuple[tuple[str, str], str]] = {
    "llama": (_LLAMA_NORMS, "norm"),
    "mistral": (_LLAMA_NORMS, "norm"),
    "qwen2": (_LLAMA_NORMS, "norm"),
    "qwen3": (_LLAMA_NORMS, "norm"),
    "gemma2": (_GEMMA_NORMS, "norm1p"),
    "gemma3_text": (_GEMMA_NORMS, "norm1p"),
    "gemma3": (_GEMMA_NORMS, "norm1p"),
}


def folds(lm: object) -> list[Fold]:
    """The four folds of every layer of ``lm`` (see the module docstring)."""
    sm = sitemap_of(lm)
    family = str(sm.config.model_type)
    if family not in FAMILIES:
        raise SmoothingError(
            f"SmoothQuant folding is not implemented for family '{family}' "
            f"(supported: {', '.join(sorted(FAMILIES))})"
        )
    (attn_norm, mlp_norm), how = FAMILIES[family]
    cfg = sm.config
    n_heads = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    out: list[Fold] = []
    for i in range(sm.n_layers):
        b = f"{sm.adapter.layers}.{i}"
        attn, mlp = f"{b}.self_attn", f"{b}.mlp"
        out += [
            Fold(f"{b}.{attn_norm}", (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"), how),
            Fold(f"{b}.{mlp_norm}", (f"{mlp}.gate_proj", f"{mlp}.up_proj"), how),
            Fold(f"{attn}.v_proj", (f"{attn}.o_proj",), "rows", (n_heads, n_kv, head_dim)),
            Fold(f"{mlp}.up_proj", (f"{mlp}.down_proj",), "rows"),
        ]
    return out


def smoothing_factors(
    act_max: Tensor, weights: list[Tensor], alpha: float, heads: tuple[int, int, int] | None = None
) -> Tensor:
    """``s_j = act_max_j^alpha / max|W_j|^(1 - alpha)`` over the group (float32, see module doc).

    With ``heads``, channels are grouped per ``v`` channel (maxima over the query heads that
    share it) and the result has ``n_kv_heads * head_dim`` entries.
    """
    a = act_max.float()
    w = torch.stack([wt.detach().float().abs().amax(dim=0) for wt in weights]).amax(dim=0)
    if heads is not None:
        n_heads, n_kv, hd = heads
        a = a.view(n_kv, n_heads // n_kv, hd).amax(dim=1).reshape(-1)
        w = w.view(n_kv, n_heads // n_kv, hd).amax(dim=1).reshape(-1)
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    s = torch.where((a > 0) & (w > 0) & torch.isfinite(s), s, torch.ones_like(s))
    return s.clamp(min=1e-5)


def expand_heads(s: Tensor, heads: tuple[int, int, int]) -> Tensor:
    """Repeat per-``v``-channel factors over the query heads of each group (o_proj input)."""
    n_heads, n_kv, hd = heads
    return s.view(n_kv, 1, hd).expand(n_kv, n_heads // n_kv, hd).reshape(-1)


@contextlib.contextmanager
def smoothed(
    lm: object, act_scales: Mapping[str, Tensor], alpha: float
) -> Iterator[dict[str, Tensor]]:
    """Fold SmoothQuant factors into ``lm`` for the block; restore the weights on exit.

    ``act_scales`` maps a Linear's module name to the per-input-channel ``max|x|`` over
    calibration tokens (the ``smoothquant_act_scales.pt`` format; for a group the first
    consumer's entry is used). Yields ``{consumer module name: s}``, the factor that divides
    that Linear's input channels (for deriving smoothed activation ranges).
    """
    sm = sitemap_of(lm)
    model = sm.model
    if not 0.0 <= alpha <= 1.0:
        raise SmoothingError(f"SmoothQuant alpha must lie in [0, 1], got {alpha}")
    plan = folds(lm)
    saved: list[tuple[Tensor, Tensor]] = []
    factors: dict[str, Tensor] = {}

    def keep(t: Tensor) -> None:
        saved.append((t, t.detach().clone()))

    try:
        with torch.no_grad():
            for f in plan:
                key = f.consumers[0]
                if key not in act_scales:
                    raise SmoothingError(f"no activation scales for '{key}'")
                cons = [model.get_submodule(c) for c in f.consumers]
                s = smoothing_factors(
                    act_scales[key].to(cons[0].weight.device),
                    [c.weight for c in cons],
                    alpha,
                    f.heads,
                )
                s_in = expand_heads(s, f.heads) if f.heads is not None else s
                prod = model.get_submodule(f.producer)
                _divide_producer(prod, f.how, s, keep)
                for name, c in zip(f.consumers, cons, strict=True):
                    keep(c.weight)
                    c.weight.copy_((c.weight.float() * s_in[None, :]).to(c.weight.dtype))
                    factors[name] = s_in
        yield factors
    finally:
        with torch.no_grad():
            for t, orig in reversed(saved):
                t.copy_(orig)


def _divide_producer(prod: nn.Module, how: str, s: Tensor, keep: Callable[[Tensor], None]) -> None:
    w = prod.weight
    keep(w)
    if how == "norm":
        w.copy_((w.float() / s).to(w.dtype))
    elif how == "norm1p":
        w.copy_(((1.0 + w.float()) / s - 1.0).to(w.dtype))
    else:
        w.copy_((w.float() / s[:, None]).to(w.dtype))
    bias = getattr(prod, "bias", None)
    if bias is not None:
        keep(bias)
        bias.copy_((bias.float() / s).to(bias.dtype))
