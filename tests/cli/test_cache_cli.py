"""`actscope cache` and `actscope cache-verify`: write, reuse, verify, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.store._corpus import write_corpus

from actscope.cli.main import main
from actscope.store import ActivationStore, shard_name


def _cache(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "cache", "tiny:llama", "--sites", "resid_post.1,mlp_out.0", "--out", str(out),
        "--corpus", str(corpus), "--max-tokens", "500", "--seq-len", "32",
        "--shard-mb", "0.05", "--dtype", "fp32", *extra,
    ]  # fmt: skip


def test_cache_then_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl")
    out = tmp_path / "store"
    assert main(_cache(corpus, out, "--store-dtype", "bfloat16")) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "500 tokens" in captured.out
    assert "caching 2 site(s) x 500 tokens as bfloat16" in captured.err.replace("\n", " ")
    store = ActivationStore(out)
    assert list(store.sites) == ["mlp_out.0", "resid_post.1"] and store.n_shards > 1
    assert main(["cache-verify", str(out)]) == 0
    assert f"ok: {store.n_shards} shard(s), 500 tokens" in capsys.readouterr().out

    shard = out / shard_name(1)
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x7f")
    assert main(["cache-verify", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("actscope: error:") and "SHA-256" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--store-dtype", "int8"], "unknown store dtype 'int8'"),
        (["--sites", "expert_in.0.1"], "unknown site"),
        (["--shard-mb", "0"], "need shard_mb > 0"),
    ],
)
def test_cache_errors_are_one_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl")
    assert main(_cache(corpus, tmp_path / "s", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_existing_folder_is_not_clobbered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_cache(corpus, out)) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
