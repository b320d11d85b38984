"""Vector files: actscope safetensors round trip and llama.cpp control-vector GGUF round trip."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gguf
import pytest
import torch

from actscope.errors import ActscopeError, DataError
from actscope.interventions.steering.vector import SteeringVector


def _vec(site: str = "resid_post", layers: tuple[int, ...] = (1, 3, 4)) -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    return SteeringVector(
        {x: torch.randn(16, generator=g) for x in layers},
        site=site,
        model="tiny:llama",
        model_hash="abc",
        family="llama",
        method="mean_diff",
        read="answer",
        dataset="toy",
        dataset_hash="f" * 64,
        stats={x: {"norm": 1.5, "pair_agreement": 0.9} for x in layers},
        meta={"seed": 0, "nested": {"a": [1, 2]}},
    )


def test_safetensors_round_trip_keeps_tensors_and_metadata(tmp_path: Path) -> None:
    v = _vec()
    path = v.save(tmp_path / "v.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]  # no temporary left over
    back = SteeringVector.load(path)
    assert back.layers == v.layers
    for x in v.layers:
        assert torch.equal(back[x], v[x])
    assert back.header() == v.header()
    assert SteeringVector.load(tmp_path / "v.safetensors").stats[3]["norm"] == 1.5


def test_load_rejects_foreign_and_missing_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DataError, match="not an actscope steering vector"):
        SteeringVector.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(DataError):
        SteeringVector.load(tmp_path / "junk.safetensors")
    with pytest.raises(DataError, match="does not exist"):
        SteeringVector.load(tmp_path / "nope.safetensors")


def test_gguf_round_trip_with_the_gguf_package(tmp_path: Path) -> None:
    v = _vec()
    path = v.to_gguf(tmp_path / "cv.gguf", scale=2.0)
    reader = gguf.GGUFReader(str(path))
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == "controlvector"
    hint = reader.fields["controlvector.model_hint"]
    assert bytes(hint.parts[hint.data[0]]).decode() == "llama"
    count = reader.fields["controlvector.layer_count"]
    assert int(count.parts[count.data[0]][0]) == 3
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.3", "direction.4"]
    back = SteeringVector.from_gguf(path)
    assert back.site == "resid_post" and back.layers == [1, 3, 4] and back.family == "llama"
    for x in v.layers:
        torch.testing.assert_close(back[x], 2.0 * v[x])
    assert SteeringVector.load(path).layers == [1, 3, 4]  # load() dispatches on .gguf


def test_gguf_layer_mapping_for_resid_pre_and_layer_zero(tmp_path: Path) -> None:
    pre = _vec("resid_pre", (2, 5))
    back = SteeringVector.from_gguf(pre.to_gguf(tmp_path / "pre.gguf"))
    # resid_pre.L is the output of block L-1: llama.cpp's direction.(L-1)
    assert back.layers == [1, 4]
    torch.testing.assert_close(back[1], pre[2])
    with pytest.raises(ActscopeError, match="no llama.cpp slot"):
        _vec("resid_post", (0, 2)).to_gguf(tmp_path / "zero.gguf")
    with pytest.raises(ActscopeError, match="only resid_post"):
        _vec("attn_out", (2,)).to_gguf(tmp_path / "attn.gguf")
    assert not list(tmp_path.glob(".*tmp"))


def test_vector_validation() -> None:
    with pytest.raises(DataError, match="NaN"):
        SteeringVector({0: torch.tensor([1.0, float("nan")])})
    with pytest.raises(DataError, match="different sizes"):
        SteeringVector({0: torch.zeros(3), 1: torch.zeros(4)})
    v = _vec()
    with pytest.raises(ActscopeError, match="no layer 7"):
        v[7]
    assert v.select([3]).layers == [3]
    torch.testing.assert_close(v.unit(3).norm(), torch.tensor(1.0))


def _with_header(path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    save_file({"direction.0": torch.ones(4)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({}, "not an actscope steering vector"),
        ({"format": "actscope.steering/1"}, "no actscope metadata"),
        ({"format": "actscope.steering/1", "actscope": "{broken"}, "not valid JSON"),
        ({"format": "actscope.steering/1", "actscope": "[1, 2]"}, "JSON object with a 'site'"),
        ({"format": "actscope.steering/1", "actscope": '{"layers": [0]}'}, "with a 'site'"),
        (
            {"format": "actscope.steering/1", "actscope": '{"site": "resid_post", "stats": 3}'},
            "field 'stats' has the wrong type",
        ),
        (
            {"format": "actscope.steering/1", "actscope": '{"site": 7}'},
            "field 'site' has the wrong type",
        ),
        (
            {
                "format": "actscope.steering/1",
                "actscope": '{"site": "resid_post", "stats": {"x": {}}}',
            },
            "layer numbers",
        ),
    ],
)
def test_load_refuses_broken_headers_with_one_data_error(
    tmp_path: Path, metadata: dict[str, str], message: str
) -> None:
    path = _with_header(tmp_path / "v.safetensors", metadata)
    with pytest.raises(DataError, match=message):
        SteeringVector.load(path)


def test_load_refuses_truncated_and_binary_files(tmp_path: Path) -> None:
    good = _vec().save(tmp_path / "v.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    (tmp_path / "bin.safetensors").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01")
    for name in ("cut", "bin", "tiny"):
        with pytest.raises(DataError, match="not a readable safetensors file"):
            SteeringVector.load(tmp_path / f"{name}.safetensors")


def test_check_model_refuses_other_weights_and_other_families() -> None:
    from tests._models import get_model

    lm = get_model("tiny:llama")
    v = _vec()
    v.check_model(lm)  # tiny models have no weights hash; same family
    with pytest.raises(ActscopeError, match=r"trained on tiny:llama \(weights sha256 abc\)"):
        v.check_model(SimpleNamespace(name="other", file_hash="def", model=lm.model))
    v.check_model(SimpleNamespace(name="copy", file_hash="abc", model=lm.model))
    qwen = get_model("tiny:qwen2")
    with pytest.raises(ActscopeError, match="trained on a llama model"):
        v.check_model(qwen)
    imported = SteeringVector({1: torch.ones(16)}, family="qwen2", method="gguf")
    imported.check_model(lm)  # a llama.cpp model hint is not an HF family name
