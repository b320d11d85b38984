"""The token x channel magnitude view of one sequence (Sun et al.'s 3-D figure, as a heatmap)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from actscope.capture.runner import forward
from actscope.capture.trace import Trace, sitemap_of
from actscope.models.tokens import token_texts


def token_channel_view(
    lm: Any, batches: list[Any], result: Any, config: Any, max_tokens: int = 48
) -> dict[str, Any]:
    """|a| of ``resid_post`` at one layer for the first ``max_tokens`` tokens of one sequence.

    The layer and sequence are those of the global maximum when it lies on the residual
    stream (else ``config.view_layer`` or the middle layer, and the first sequence).
    """
    sm = sitemap_of(lm)
    best = result.summary.get("global_max", {})
    layer = config.view_layer
    if layer is None:
        layer = best.get("layer") if best.get("kind", "").startswith("resid") else None
    if layer is None or layer != layer:  # None or NaN
        layer = sm.n_layers // 2
    layer = int(layer)
    seq = None
    want = (best.get("sample_id"), int(best.get("position", 0)) // max(1, config.seq_len))
    for b in batches:
        for i in range(b.input_ids.shape[0]):
            key = (int(b.sample_ids[i]), int(b.chunk_ids[i]))
            if seq is None or key == want:
                ids = b.input_ids[i][b.attention_mask[i].bool()]
                seq = (key, ids)
                if key == want:
                    break
        if seq is not None and seq[0] == want:
            break
    assert seq is not None
    ids = seq[1][:max_tokens].unsqueeze(0).to(lm.device)
    site = f"resid_post.{layer}"
    with torch.inference_mode(), Trace(sm, site, retain=True, stop=True) as tr:
        forward(lm.model, ids)
    mag = tr[site][0].float().abs().cpu().numpy()
    tokens = token_texts(lm.tokenizer, ids[0].tolist())
    top = np.argsort(mag.max(0))[::-1][:8]
    return {
        "site": site,
        "layer": layer,
        "sample": list(seq[0]),
        "tokens": tokens,
        "abs": mag,
        "top_channels": [int(c) for c in top],
    }
