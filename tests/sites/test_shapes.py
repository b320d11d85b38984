"""The site table: one row per site with its measured shape; scaled sites say their factor."""

from __future__ import annotations

from tests._models import get_model

from actscope.sites.shapes import site_shapes


def test_rows_give_shapes_and_the_scale_of_scaled_sites() -> None:
    rows = {r["site"]: r for r in site_shapes(get_model("tiny:granite"), ["attn_out.0", "logits"])}
    assert rows["attn_out.0"]["mode"] == "out x0.5" and rows["attn_out.0"]["shape"] == "1x4x64"
    assert rows["logits"]["mode"] == "out x0.25"
    plain = site_shapes(get_model("tiny:llama"), ["attn_out.0"])
    assert plain[0]["mode"] == "out"
