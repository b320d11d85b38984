"""The site vocabulary: one name per tensor, with the same meaning on every family.

A *site* is a tensor inside the forward pass, named ``<kind>`` (model-wide sites),
``<kind>.<layer>`` (per-layer sites) or ``<kind>.<layer>.<expert>`` (per-expert MoE sites).
Every per-layer name below is checked on every supported family by invariant tests
(``tests/sites/test_invariants.py``):

* ``resid_mid == resid_pre + attn_out`` (+ ``ssm_out`` and the other mixers' outputs on
  hybrid layers, see :data:`MIXER_KINDS`) and ``resid_post == resid_mid + mlp_out``;
* ``resid_post.l == resid_pre.(l+1)`` and ``embed == resid_pre.0``;
* ``logits`` recomputed from ``final_norm`` equal the model's logits;
* observing any set of sites leaves the logits bit-identical.

Linear sites are named after the projection (``q, k, v, o, gate, up, down`` or the family's
fused equivalents ``qkv``, ``gate_up``) with ``_in`` / ``_out`` appended: ``q_in.3`` is the
input of layer 3's query projection, ``down_out.3`` its down projection's output.
"""

from __future__ import annotations

MODEL_KINDS: dict[str, str] = {
    "embed": "exactly what enters layer 0: token (and position) embeddings with any scaling "
    "the family applies (Gemma's sqrt(d) included); equal to resid_pre.0",
    "final_norm": "output of the final normalisation, the input of the unembedding",
    "logits": "the model's output logits (after any final logit scaling or soft-capping)",
}

LAYER_KINDS: dict[str, str] = {
    "resid_pre": "residual stream entering the layer (the layer's hidden_states input)",
    "attn_in": "input of the attention module (normalised residual on pre-norm families; the "
    "raw residual on OLMo2, which normalises attention outputs instead)",
    "attn_out": "what attention adds to the residual stream, after any post-attention norm "
    "(Gemma 2/3, OLMo2) and before the addition",
    "ssm_in": "input of the layer's state-space (Mamba) mixer, on layers that run one",
    "ssm_out": "what the SSM mixer adds to the residual stream, before the addition",
    "linattn_in": "input of the layer's linear-attention mixer (gated DeltaNet and kin)",
    "linattn_out": "what the linear-attention mixer adds to the residual stream",
    "conv_in": "input of the layer's short-convolution mixer (LFM2)",
    "conv_out": "what the short-convolution mixer adds to the residual stream",
    "resid_mid": "residual stream after the attention addition, before the MLP block; on "
    "parallel-residual families (GPT-NeoX) defined as resid_pre + attn_out",
    "mlp_in": "input of the MLP or MoE block",
    "router_logits": "MoE router logits, one per expert, before the softmax (observe-only)",
    "mlp_gate": "gate projection output before its activation (gated MLPs); on non-gated MLPs "
    "(GPT-2, GPT-NeoX) the up projection before its activation",
    "mlp_act": "input of the down projection: act(gate) * up, or act(up) on non-gated MLPs",
    "mlp_out": "what the MLP/MoE block adds to the residual stream, after any post-MLP norm",
    "resid_post": "residual stream leaving the layer (the layer's output)",
}
"""Per-layer kinds, in execution order (the order of a layer's sites in every SiteMap)."""

MIXER_KINDS: dict[str, tuple[str, str]] = {
    "attention": ("attn_in", "attn_out"),
    "ssm": ("ssm_in", "ssm_out"),
    "linear_attention": ("linattn_in", "linattn_out"),
    "conv": ("conv_in", "conv_out"),
}
"""Token-mixer kinds -> their (input, output) site kinds. A layer's resid_mid is resid_pre plus
the outputs of every mixer the layer runs (one on most layers, two on Falcon-H1)."""
MIXER_OUT_KINDS: tuple[str, ...] = tuple(out for _, out in MIXER_KINDS.values())

EXPERT_KINDS: dict[str, str] = {
    "expert_in": "input of expert e (the MoE block input); mask = tokens routed to e",
    "expert_gate": "expert e's gate projection before its activation; mask = tokens routed to e",
    "expert_act": "input of expert e's down projection; mask = tokens routed to e",
    "expert_out": "expert e's output times its routing weight (its contribution to mlp_out)",
}

LINEAR_SUFFIXES: dict[str, str] = {
    "_in": "input of the Linear layer (what its weight multiplies)",
    "_out": "output of the Linear layer (bias included)",
}


def describe_kind(kind: str) -> str:
    """Written meaning of a site kind (``q_in`` and friends included)."""
    for table in (MODEL_KINDS, LAYER_KINDS, EXPERT_KINDS):
        if kind in table:
            return table[kind]
    for suffix, text in LINEAR_SUFFIXES.items():
        if kind.endswith(suffix):
            return f"{text}: {kind[: -len(suffix)]}"
    raise KeyError(kind)
