"""The embedded models on Ray: SmolLM2's Ray profile equals its single-process profile, and a
sweep compares SmolLM2-135M with Gemma 3 270M in one report (slow: real models)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
from tests.distributed.test_profile import assert_same_profile, one_thread
from tests.store._corpus import small_corpus, write_corpus

from actscope.analyses.profile import ProfileConfig, profile
from actscope.distributed import load_sweep, profile_ray, run_sweep
from actscope.models import LoadedModel

pytestmark = pytest.mark.slow

SITES = ["embed", "resid_post", "attn_out", "mlp_out", "final_norm"]


def test_smollm2_ray_profile_equals_single_process(
    ray_cluster: ModuleType, smollm2: LoadedModel
) -> None:
    cfg = ProfileConfig(sites=SITES, max_tokens=1200, seq_len=64, batch_size=4)
    corpus = small_corpus(120)
    with one_thread():
        single = profile(smollm2, corpus, config=copy.deepcopy(cfg))
    ray_result = profile_ray("smollm2-135m", corpus, copy.deepcopy(cfg), workers=2, device="cpu")
    assert ray_result.manifest["model"]["dtype"] == single.manifest["model"]["dtype"] == "bfloat16"
    assert_same_profile(single, ray_result)


def test_sweep_compares_smollm2_and_gemma3(ray_cluster: ModuleType, tmp_path: Path) -> None:
    write_corpus(tmp_path / "c.jsonl", n=90)
    spec_file = tmp_path / "models.yaml"
    spec_file.write_text(
        "corpus: c.jsonl\n"
        f"profile: {{max_tokens: 800, seq_len: 64, batch_size: 4, sites: {SITES}}}\n"
        "models: [smollm2-135m, gemma3-270m]\n"
    )
    result = run_sweep(load_sweep(spec_file), tmp_path / "sweep", executor="ray")
    assert not result.errors and list(result.runs) == ["smollm2-135m", "gemma3-270m"]
    assert result.comparison is not None
    models = pd.read_parquet(result.comparison / "tables" / "models.parquet")
    assert sorted(models["family"]) == ["gemma3_text", "llama"]
    assert (models["global_max_abs"] > 0).all() and (models["tokens"] == 800).all()
    html = (result.comparison / "report.html").read_text()
    assert "smollm2-135m" in html and "gemma3-270m" in html and "data:image/png" in html
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert all(m["tokens_per_s"] for m in record["models"])
