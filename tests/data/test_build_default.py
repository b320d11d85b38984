"""The committed default corpus: pinned bytes, reproducible build, four large-enough domains."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from actscope.data import build_default, loaders
from actscope.data.batching import tokenize_corpus
from actscope.data.loaders import DEFAULT_CORPUS_FILE, load_corpus
from actscope.errors import DataError
from actscope.utils.hashing import sha256_file

# Pinned here on purpose: a rebuild that changes the corpus must be a visible, reviewed change.
EXPECTED_SHA256 = "58dbbfe030bb60006040d1c4f76dde84098cbb8a52a2ebf15070c228e651c8f8"
DOMAINS = ("code", "math", "multilingual", "prose")
SCRIPTS = {
    "Han": r"[\u4e00-\u9fff]",
    "Kana": r"[\u3040-\u30ff]",
    "Hangul": r"[\uac00-\ud7af]",
    "Cyrillic": r"[\u0400-\u04ff]",
    "Greek": r"[\u0370-\u03ff]",
    "Arabic": r"[\u0600-\u06ff]",
    "Devanagari": r"[\u0900-\u097f]",
    "Hebrew": r"[\u0590-\u05ff]",
    "Thai": r"[\u0e00-\u0e7f]",
    "Georgian": r"[\u10a0-\u10ff]",
}


def committed_manifest() -> dict[str, Any]:
    path = DEFAULT_CORPUS_FILE.with_name(build_default.MANIFEST_NAME)
    return json.loads(path.read_text("utf-8"))


def test_committed_file_matches_pinned_sha256() -> None:
    assert sha256_file(DEFAULT_CORPUS_FILE) == EXPECTED_SHA256
    assert loaders.DEFAULT_CORPUS_SHA256 == EXPECTED_SHA256
    assert committed_manifest()["sha256"] == EXPECTED_SHA256


def test_size_limit() -> None:
    assert DEFAULT_CORPUS_FILE.stat().st_size < 1_500_000


def test_rebuild_is_byte_identical() -> None:
    try:
        data, manifest = build_default.build()
    except DataError as err:
        pytest.skip(f"build inputs missing on this machine: {err}")
    if manifest["inputs"] != committed_manifest()["inputs"]:
        # Other inputs (another Python or PostgreSQL): the build must still be deterministic.
        assert build_default.build()[0] == data
        pytest.skip("this machine's input files differ from those the corpus was built from")
    assert data == DEFAULT_CORPUS_FILE.read_bytes()
    assert manifest == committed_manifest()


def test_manifest_describes_loaded_corpus() -> None:
    corpus = load_corpus("default")
    manifest = committed_manifest()
    assert manifest["corpus_hash"] == corpus.hash
    assert manifest["n_samples"] == len(corpus)
    assert manifest["domain_mix"] == corpus.domain_mix()


def test_samples_are_well_formed() -> None:
    corpus = load_corpus("default")
    assert corpus.domains == DOMAINS
    for s in corpus:
        assert s.id.startswith(f"{s.domain}/")
        assert s.source
        assert len(s.text.encode("utf-8")) >= build_default.MIN_BYTES
        assert len(s.text) <= 2000
        assert s.text == s.text.strip("\n")


def test_domain_mix_is_broad() -> None:
    corpus = load_corpus("default")
    mix = corpus.domain_mix()
    assert all(mix[d]["samples"] >= 100 for d in DOMAINS)
    code = [s for s in corpus if s.domain == "code"]
    assert {s.id.split("/")[1] for s in code} == {"python", "c", "sql"}
    multilingual = "\n".join(s.text for s in corpus if s.domain == "multilingual")
    present = {name for name, pattern in SCRIPTS.items() if re.search(pattern, multilingual)}
    assert present == set(SCRIPTS)
    math_text = "\n".join(s.text for s in corpus if s.domain == "math")
    for marker in ("\\frac", "\\begin{align*}", "Proof.", "$$"):
        assert marker in math_text


@pytest.mark.slow
def test_token_counts_with_real_tokenizer(smollm2_tokenizer: Any) -> None:
    corpus = load_corpus("default")
    counts = dict.fromkeys(DOMAINS, 0)
    for s in corpus:
        counts[s.domain] += len(smollm2_tokenizer(s.text, add_special_tokens=False)["input_ids"])
    assert all(n >= 50_000 for n in counts.values()), counts


@pytest.mark.slow
def test_100k_budget_is_balanced(smollm2_tokenizer: Any) -> None:
    tok = tokenize_corpus(
        load_corpus("default"), smollm2_tokenizer, seq_len=256, max_tokens=100_000
    )
    assert tok.n_tokens == 100_000
    per = tok.tokens_per_domain()
    assert all(abs(n - 25_000) <= 256 for n in per.values()), per
