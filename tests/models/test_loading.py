"""Model loading: embedded defaults, GGUF files, folders, hub ids and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests._models import get_model

from actscope.errors import ModelLoadError, ModelNotFoundError
from actscope.models import EMBEDDED, embedded_gguf, load_model, resolve_dtype


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'smollm-135m'.*did you mean"):
        load_model("smollm-135m")


def test_missing_hub_id_is_not_downloaded() -> None:
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        load_model("nobody-here/no-such-model")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        load_model(str(tmp_path / "nothing" / "model.gguf"))
    with pytest.raises(ModelNotFoundError, match="neither config.json"):
        load_model(str(tmp_path))


def test_corrupt_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(str(bad))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(embedded_gguf("smollm2-135m").read_bytes()[:4096])
    with pytest.raises(ModelLoadError, match="cannot read GGUF"):
        load_model(str(truncated), use_cache=False)


def test_dtype_resolution() -> None:
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_dtype("fp32", "cpu") == torch.float32
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("int3", "cpu")


def test_tiny_models_and_hf_folder_round_trip(tmp_path: Path) -> None:
    lm = load_model("tiny:qwen2", dtype="fp32")
    assert lm.family == "qwen2" and lm.dtype == torch.float32
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"), dtype="fp32")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(lm.model(ids).logits, again.model(ids).logits)
    with pytest.raises(ModelNotFoundError, match="unknown tiny family"):
        load_model("tiny:lama")


def test_embedded_files_are_found() -> None:
    for name in EMBEDDED:
        path = embedded_gguf(name)
        assert path.exists() and path.read_bytes()[:4] == b"GGUF"


@pytest.mark.slow
def test_first_load_equals_cached_and_uncached_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GGUF path (which writes the dense cache), the cached path and the no-cache path
    give the same model in bf16: weights, every buffer (rotary frequencies stay float32, as
    ``from_pretrained(dtype=bf16)`` keeps them) and logits, bit for bit."""
    monkeypatch.setenv("ACTSCOPE_CACHE", str(tmp_path))
    first = load_model("smollm2-135m", dtype="bf16")  # GGUF path, writes the cache
    assert any((tmp_path / "dense").iterdir())
    cached = load_model("smollm2-135m", dtype="bf16")
    uncached = load_model("smollm2-135m", dtype="bf16", use_cache=False)
    ids = torch.arange(10, 42).reshape(2, 16)
    ref = dict(cached.model.named_buffers())
    assert ref["model.rotary_emb.inv_freq"].dtype == torch.float32
    with torch.no_grad():
        want = cached.model(ids).logits
    for lm in (first, uncached):
        for (n1, p1), (n2, p2) in zip(
            lm.model.state_dict().items(), cached.model.state_dict().items(), strict=True
        ):
            assert n1 == n2 and torch.equal(p1, p2), n1
        for n, buf in lm.model.named_buffers():
            assert buf.dtype == ref[n].dtype and torch.equal(buf, ref[n]), n
        with torch.no_grad():
            assert torch.equal(lm.model(ids).logits, want)
    assert first.file_hash == cached.file_hash and len(first.file_hash or "") == 64


@pytest.mark.slow
def test_real_models_describe_themselves() -> None:
    s = get_model("smollm2-135m", "bf16").describe()
    assert s["family"] == "llama" and s["dtype"] == "bfloat16" and s["kind"] == "embedded"
    g = get_model("gemma3-270m", "bf16").describe()
    assert g["family"] == "gemma3_text"


@pytest.mark.parametrize(
    ("device", "message"),
    [("tpu", "unknown device 'tpu'"), ("cuda:99", "cuda"), ("", "unknown device")],
)
def test_devices_that_do_not_exist_are_refused(device: str, message: str) -> None:
    from actscope.models import resolve_device

    if device == "cuda:99" and torch.cuda.is_available():
        message = "only"
    with pytest.raises(ModelLoadError, match=message):
        resolve_device(device)
    assert resolve_device("cpu") == "cpu"


def test_model_kind_resolves_without_loading(tmp_path: Path) -> None:
    from actscope.models.loading import model_kind

    assert model_kind("tiny:llama") == "tiny"
    assert model_kind(next(iter(EMBEDDED))) == "embedded"
    assert model_kind(tmp_path) == "path"
    assert model_kind("org/name") == "hub"
    with pytest.raises(ModelNotFoundError, match="unknown tiny family"):
        model_kind("tiny:nope")
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        model_kind("no-such-model-x")


def test_corrupt_safetensors_in_a_folder_is_a_load_error(tmp_path: Path) -> None:
    lm = get_model("tiny:llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="SafetensorError"):
        load_model(tmp_path)


def test_seq_len_beyond_the_positions_is_refused() -> None:
    lm = get_model("tiny:gpt2")
    assert lm.max_positions == 256
    lm.check_seq_len(256)
    with pytest.raises(ModelLoadError, match="--seq-len 257 is longer than the 256 positions"):
        lm.check_seq_len(257)


def test_same_model_by_hash_or_by_family_and_size() -> None:
    lm = get_model("tiny:llama")
    lm.check_same_model(lm.describe(), "a run")
    with pytest.raises(ModelLoadError, match="a run was made with tiny:gpt2 \\(family gpt2\\)"):
        lm.check_same_model({**lm.describe(), "name": "tiny:gpt2", "family": "gpt2"}, "a run")
    with pytest.raises(ModelLoadError, match="n_parameters 5"):
        lm.check_same_model({**lm.describe(), "n_parameters": 5}, "a run")
    hashed = {**lm.describe(), "file_hash": "a" * 64}
    lm.file_hash = "b" * 64
    try:
        with pytest.raises(ModelLoadError, match="weights sha256 aaaaaaaaaaaa"):
            lm.check_same_model(hashed, "a run")
        lm.check_same_model({**hashed, "file_hash": "b" * 64, "n_parameters": 5}, "a run")
    finally:
        lm.file_hash = None
