"""Write docs/compat.md: which sites each model family offers, checked by the site identities.

Every tiny family of :mod:`actscope.models.tiny` is built (2 layers, random weights) and mapped
twice when it has an adapter (through the adapter, and through discovery as if it had none),
once otherwise. Each offered site is checked by :func:`actscope.sites.identities.check_sitemap`;
the table gives the sites offered and passing, the time to map and check (CPU, ms), the sites not offered (declared by the adapter
or found by discovery, with the reason) and any site failing an identity.

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
from actscope.sites.identities import check_sitemap, failures
from actscope.sites.sitemap import SiteMap

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
    """Build the tiny model, map it, check every offered site."""
    torch.manual_seed(0)
    model = build_tiny(family)
    t0 = time.perf_counter()
    adapter = adapter_for(str(model.config.model_type)) if mapping == "adapter" else None
    sm = SiteMap(model, adapter if adapter is not None else discover(model))
    checks = check_sitemap(sm)
    seconds = time.perf_counter() - t0
    bad = failures(checks)
    mixers = [k for k in ("attn_in", "ssm_in", "linattn_in", "conv_in") if k in sm.kinds()]
    return {
        "family": family,
        "model_type": str(model.config.model_type),
        "mapping": mapping,
        "offered": len(sm.names),
        "passing": len([n for n in sm.names if n not in bad]),
        "checks": len(checks),
        "kinds": len(sm.kinds()),
        "mixers": ", ".join(k.removesuffix("_in") for k in mixers) or "-",
        "dropped": _group(sm.dropped),
        "failing": _group(bad),
        "seconds": seconds,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| tiny family | model type | mapping | sites offered (passing) | checks | map + check ms "
        "| mixers | not offered, and why | failing |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['family']} | {r['model_type']} | {r['mapping']} | {r['offered']} ({r['passing']}) "
        f"| {r['checks']} | {r['seconds'] * 1000:.0f} | {r['mixers']} | {r['dropped']} "
        f"| {r['failing']} |\n"
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
                        "offered": 0,
                        "passing": 0,
                        "checks": 0,
                        "kinds": 0,
                        "mixers": "-",
                        "dropped": f"not built: {type(e).__name__}: {str(e)[:120]}",
                        "failing": "-",
                        "seconds": 0.0,
                    }
                )
            r = rows[-1]
            print(
                f"{fam:18s} {mapping:9s} {r['passing']}/{r['offered']} sites, "
                f"{r['checks']} checks, {r['seconds'] * 1000:.0f} ms"
            )
    n_fail = sum(r["failing"] != "-" for r in rows)
    text = f"""# Compatibility table

Generated by `scripts/compat_table.py` with transformers {transformers.__version__} and
torch {torch.__version__}, on tiny random models (2 layers, hidden size 64; `load_model("tiny:FAMILY")`,
see `src/actscope/models/tiny.py`). Each family with an adapter is mapped twice: through its
adapter and through discovery (as if it had none). Every offered site is checked on a padded
probe by `actscope.sites.identities.check_sitemap`: shapes (batch, seq, ...), the residual
identities (resid_mid = resid_pre + mixer outputs, resid_post = resid_mid + mlp_out,
resid_post.l = resid_pre.(l+1), embed = resid_pre.0), logits equal to the model's, final_norm
giving the logits back, mlp_act = down_in, every Linear's output = module(input), router logits
= W mlp_in (+ b), experts summing to mlp_out.

"Not offered" lists sites the family has but no hooked tensor holds (a branch or the logits
scaled outside any module, rows flattened inside the layer), with the reason; "failing" lists
offered sites that fail an identity (none should: discovery drops them itself).
{n_fail} of {len(rows)} rows have failing sites. Every family listed here instantiates and runs
on CPU with transformers {transformers.__version__} (deepseek_v3 needs num_key_value_heads equal to
num_attention_heads in its tiny config; dbrx needs rope_theta and clip_qkv in attn_config).

{table(rows)}"""
    Path(args.out).write_text(text)
    print(f"wrote {args.out}: {len(rows)} rows, {n_fail} with failing sites")


if __name__ == "__main__":
    main()
