"""Write docs/compat.md: which sites each model family offers, as verification decides.

Every tiny family of :mod:`actscope.models.tiny` is built (2 layers, random weights) and mapped
twice when it has an adapter (through the adapter, and through discovery as if it had none),
once otherwise. Each map is verified by :func:`actscope.sites.verify.verify_sitemap`, the
check run at every load; the table gives the sites verified and offered, the identity checks
(passing / evaluated), the time of the check and of discovery (CPU, ms), the sites not
offered by the table (declared by the adapter or by discovery, with the reason) and the sites
verification dropped (with the identity and its error).

    PYTHONPATH=src python scripts/compat_table.py [--out docs/compat.md] [FAMILY ...]
"""

from __future__ import annotations

import argparse
import logging
import re
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import transformers

from actscope.models.tiny import CONFIGS, DISCOVERY_ONLY, PARTIAL, build_tiny
from actscope.sites.adapters import adapter_for
from actscope.sites.discovery import discover
from actscope.sites.sitemap import SiteMap
from actscope.sites.verify import apply_verification, verify_sitemap

_LAYERED = re.compile(r"^(?P<kind>[a-z_]+)\.(?P<layer>\d+)(?:\.\d+)?$")


def _group(reasons: dict[str, str]) -> str:
    """'kind (layers 0, 1): reason' per distinct (kind, reason), joined by '<br>'."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, reason in reasons.items():
        m = _LAYERED.match(name)
        kind, layer = (m.group("kind"), m.group("layer")) if m else (name, "")
        if layer not in groups[(kind, reason)]:
            groups[(kind, reason)].append(layer)
    parts = []
    for (kind, reason), layers in groups.items():
        where = f" (layers {', '.join(x for x in layers)})" if any(layers) else ""
        parts.append(f"`{kind}`{where}: {reason}")
    return "<br>".join(parts) or "-"


def row(family: str, mapping: str) -> dict[str, Any]:
    """Build the tiny model, map it, verify it (the load-time check) and apply the result."""
    torch.manual_seed(0)
    model = build_tiny(family)
    t0 = time.perf_counter()
    adapter = adapter_for(str(model.config.model_type)) if mapping == "adapter" else None
    sm = SiteMap(model, adapter if adapter is not None else discover(model))
    mapped = time.perf_counter() - t0
    declared = dict(sm.dropped)
    res = verify_sitemap(model, sm)
    apply_verification(sm, res)
    mixers = [k for k in ("attn_in", "ssm_in", "linattn_in", "conv_in") if k in sm.kinds()]
    evaluated = [c for c in res.checks if c.status != "skipped"]
    return {
        "family": family,
        "model_type": str(model.config.model_type),
        "mapping": mapping,
        "verified": len(sm.names),
        "checks": f"{sum(c.status == 'pass' for c in evaluated)}/{len(evaluated)}",
        "mixers": ", ".join(k.removesuffix("_in") for k in mixers) or "-",
        "declared": _group(declared),
        "dropped": _group(res.dropped),
        "n_dropped": len(declared) + len(res.dropped),
        "check_ms": res.seconds * 1000,
        "map_ms": mapped * 1000,
        "error": res.error,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| tiny family | model type | mapping | sites verified | checks passing | check ms "
        "| map ms | mixers | not offered by the table, and why | dropped by verification |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['family']} | {r['model_type']} | {r['mapping']} | {r['verified']} "
        f"| {r['checks']} | {r['check_ms']:.0f} | {r['map_ms']:.0f} | {r['mixers']} "
        f"| {r['declared']} | {r['error'] or r['dropped']} |\n"
        for r in rows
    )
    return head + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("families", nargs="*", default=sorted({**CONFIGS, **PARTIAL}))
    ap.add_argument("--out", default="docs/compat.md")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    rows = []
    for fam in args.families:
        only = fam in DISCOVERY_ONLY or fam in PARTIAL
        mappings = ["discovery"] if only else ["adapter", "discovery"]
        for mapping in mappings:
            try:
                rows.append(row(fam, mapping))
            except Exception as e:  # a family transformers cannot build or run here
                rows.append(
                    {
                        "family": fam,
                        "model_type": "?",
                        "mapping": mapping,
                        "verified": 0,
                        "checks": "0/0",
                        "mixers": "-",
                        "declared": f"not built: {type(e).__name__}: {str(e)[:120]}",
                        "dropped": "-",
                        "n_dropped": 0,
                        "check_ms": 0.0,
                        "map_ms": 0.0,
                        "error": None,
                    }
                )
            r = rows[-1]
            print(
                f"{fam:18s} {mapping:9s} {r['verified']} sites, {r['n_dropped']} not offered, "
                f"checks {r['checks']}, check {r['check_ms']:.0f} ms, map {r['map_ms']:.0f} ms"
            )
    n_drop = sum(r["dropped"] != "-" for r in rows)
    text = f"""# Compatibility table

Generated by `scripts/compat_table.py` with transformers {transformers.__version__} and
torch {torch.__version__}, on tiny random models (2 layers, hidden size 64;
`load_model("tiny:FAMILY")`, see `src/actscope/models/tiny.py`). Each family with an adapter is
mapped twice: through its adapter and through discovery (as if it had none). Every map is
verified exactly as at load time, by `actscope.sites.verify.verify_sitemap` on a padded probe
(float32): every site produces a value shaped (batch, seq, ...); embed = resid_pre.0;
resid_mid = resid_pre + the layer's mixer outputs (attn_out, ssm_out, ...); resid_post =
resid_mid + mlp_out; resid_post = resid_pre of the next layer; logits equal the model's;
final_norm gives the logits back through the LM head, the logits scale and soft-cap;
mlp_act = down_in; mlp_gate = gate_out; router logits = W mlp_in (+ b); the experts' outputs
sum to mlp_out. "checks passing" counts identity instances (per layer).

"Not offered by the table" lists sites the family has but the adapter or discovery does not
map (two MLP modules adding side by side, no MLP in the layer, ...) with the reason;
"dropped by verification" lists mapped sites that failed an identity (none should for an
adapter). Scaled branches and logits (Granite, Cohere, Falcon-H1) are offered: their sites
carry the family's factor. {n_drop} of {len(rows)} rows have sites dropped by verification.
"check ms" is the verification probe (CPU, 2 cores shared); "map ms" the time to build the
table (discovery runs its own probe and a verification).

{table(rows)}"""
    Path(args.out).write_text(text)
    print(f"wrote {args.out}: {len(rows)} rows, {n_drop} with sites dropped by verification")


if __name__ == "__main__":
    main()
