"""Fake quantizers against values computed by hand, and exact percentile clipping."""

from __future__ import annotations

import pytest
import torch

from actscope.interventions.quant import (
    QuantSpec,
    QuantSpecError,
    Range,
    exact_quantiles,
    fake_quantize,
    parse_specs,
)
from actscope.interventions.quant.spec import default_grid, fast_grid


def spec(text: str) -> QuantSpec:
    return QuantSpec.parse(text)


def test_parse_round_trip_and_errors() -> None:
    for name in ("int8-sym-tensor-max", "int4-asym-group64-p99.9", "fp8-sym-channel-mse"):
        assert QuantSpec.parse(name).name == name
    s = QuantSpec.parse("int4-asym-group-p99.99")
    assert (s.bits, s.qmax, s.levels, s.group_size) == (4, 7, 15, 128)
    assert s.percentile == pytest.approx(0.9999)
    with pytest.raises(QuantSpecError):
        QuantSpec.parse("fp8-asym-token-max")
    with pytest.raises(QuantSpecError):
        QuantSpec.parse("int9-sym-token-max")
    assert [x.name for x in parse_specs("int8-sym-token-max, int8-sym-token-max")] == [
        "int8-sym-token-max"
    ]
    assert len(default_grid()) == 36 and len(fast_grid()) == 8


def test_int8_symmetric_static_range_rounds_half_to_even_and_clips() -> None:
    x = torch.tensor([0.4, 0.5, 1.5, -200.0, 130.0, -128.4])
    q, clipped = fake_quantize(x, spec("int8-sym-tensor-max"), static=Range.symmetric(127.0))
    # s = 127 / 127 = 1; codes clamp to [-128, 127]
    assert q.tolist() == [0.0, 0.0, 2.0, -128.0, 127.0, -128.0]
    assert int(clipped) == 2


def test_int4_symmetric_per_token() -> None:
    x = torch.tensor([[1.0, -2.0, 3.5, 7.0], [0.0, 0.0, 0.0, 0.0], [0.7, 0.1, -0.35, 0.0]])
    q, clipped = fake_quantize(x, spec("int4-sym-token-max"))
    # row 0: s = 7/7 = 1; row 1: all zero stays zero; row 2: s = 0.1, x/s = 7, 1, -3.5, 0
    assert q[0].tolist() == [1.0, -2.0, 4.0, 7.0]
    assert q[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(q[2], torch.tensor([0.7, 0.1, -0.4, 0.0]))
    assert int(clipped) == 0


def test_asymmetric_zero_point() -> None:
    x = torch.tensor([-1.0, 0.0, 2.0, 14.0])
    q, _ = fake_quantize(x, spec("int4-asym-tensor-max"))
    # lo=-1, hi=14: s = 15/15 = 1, z = 1
    assert q.tolist() == [-1.0, 0.0, 2.0, 14.0]
    x = torch.tensor([0.3, 0.6, 3.0])
    q, _ = fake_quantize(x, spec("int4-asym-tensor-max"))
    # range widened to include 0: lo=0, hi=3, s=0.2, z=0; x/s = 1.5, 3, 15 -> 2, 3, 15
    torch.testing.assert_close(q, torch.tensor([0.4, 0.6, 3.0]))
    q, clipped = fake_quantize(
        torch.tensor([-5.0, 1.0, 20.0]), spec("int4-asym-tensor-max"), static=Range(-3.0, 12.0)
    )
    # s = 1, z = 3: -5 -> code -2 clipped to 0 -> -3; 20 -> code 23 clipped to 15 -> 12
    assert q.tolist() == [-3.0, 1.0, 12.0] and int(clipped) == 2


def test_asymmetric_zero_point_rounding_can_clip_the_max() -> None:
    # lo=-3.5, hi=11.5: s = 1, z = round(3.5) = 4 (half to even), 11.5 -> 12 + 4 > 15
    q, clipped = fake_quantize(torch.tensor([-3.5, 11.5]), spec("int4-asym-tensor-max"))
    assert q.tolist() == [-4.0, 11.0] and int(clipped) == 1
    # a symmetric grid scaled to the block max never clips (fp8: 448 * (1 + eps) is no clip)
    x = torch.randn(64, 32)
    for name in ("int4-sym-token-max", "fp8-sym-group8-max", "int8-sym-channel-max"):
        assert int(fake_quantize(x, spec(name))[1]) == 0


def test_fp8_e4m3() -> None:
    x = torch.tensor([1.3, 500.0, 0.0011, -3.3])
    q, clipped = fake_quantize(x, spec("fp8-sym-tensor-max"), static=Range.symmetric(448.0))
    # s = 1: E4M3 has 3 mantissa bits (1.3 -> 1.25, 3.3 -> 3.25), min subnormal 2^-9
    assert q.tolist() == [1.25, 448.0, 2.0**-9, -3.25]
    assert int(clipped) == 1


def test_per_channel_and_per_group_scales() -> None:
    x = torch.tensor([[1.0, 10.0], [2.0, -20.0], [4.0, 5.0]])
    q, _ = fake_quantize(x, spec("int8-sym-channel-max"))
    s0, s1 = 4.0 / 127, 20.0 / 127
    expected = torch.tensor(
        [[round(1 / s0) * s0, 64 * s1], [round(2 / s0) * s0, -127 * s1], [127 * s0, 32 * s1]]
    )
    torch.testing.assert_close(q, expected)
    # groups of 2 over 5 channels: [0:2], [2:4], [4:5] (remainder group); -0.3 / (0.5/7) = -4.2
    x = torch.tensor([[1.0, 7.0, 0.5, -0.3, 3.0]])
    q, _ = fake_quantize(x, spec("int4-sym-group2-max"))
    torch.testing.assert_close(q, torch.tensor([[1.0, 7.0, 0.5, -4 * 0.5 / 7, 3.0]]))


def test_percentile_clipping_matches_exact_quantiles() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 300) * torch.rand(6, 1) * 3
    x[2, 17] = 80.0
    for p in (0.99, 0.999, 0.9999):
        name = f"int8-sym-token-p{p * 100:g}"
        q, clipped = fake_quantize(x, spec(name))
        # float64 reference: torch.quantile interpolates in the input dtype
        c = torch.quantile(x.double().abs(), p, dim=-1, keepdim=True).float()
        s = c / 127
        ref = torch.clamp(torch.round(x / s), -128, 127) * s
        torch.testing.assert_close(q, ref)
        assert int(clipped) == int(((torch.round(x / s) > 127) | (torch.round(x / s) < -128)).sum())
    # asymmetric: lower and upper quantiles of the signed values
    q, _ = fake_quantize(x, spec("int8-asym-token-p99"))
    lo = torch.quantile(x.double(), 0.01, dim=-1, keepdim=True).float().clamp(max=0)
    hi = torch.quantile(x.double(), 0.99, dim=-1, keepdim=True).float().clamp(min=0)
    s = (hi - lo) / 255
    z = torch.round(-lo / s)
    ref = (torch.clamp(torch.round(x / s) + z, 0, 255) - z) * s
    torch.testing.assert_close(q, ref)


def test_exact_quantiles_ignore_nan_and_match_torch() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 50)
    x[1, 20:] = float("nan")
    got = exact_quantiles(x, [0.0, 0.37, 0.999, 1.0])
    for i in range(4):
        row = x[i][~torch.isnan(x[i])]
        qs = torch.tensor([0.0, 0.37, 0.999, 1.0], dtype=torch.float64)
        want = torch.quantile(row.double(), qs).float()
        torch.testing.assert_close(torch.stack([g[i, 0] for g in got]), want)


def test_padding_rows_are_zeroed_and_excluded() -> None:
    x = torch.tensor([[[1.0, -3.0], [100.0, 100.0]]])  # second token is padding
    valid = torch.tensor([[True, False]])
    q, clipped = fake_quantize(x, spec("int8-sym-channel-p50"), valid=valid)
    assert q[0, 1].tolist() == [0.0, 0.0] and int(clipped) == 0
    # with only one real row per channel, the per-channel median is that row's |x|
    torch.testing.assert_close(q[0, 0], torch.tensor([1.0, -3.0]))


def test_dtype_and_device_preserved_shape() -> None:
    x = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    q, _ = fake_quantize(x, spec("int8-sym-token-max"))
    assert q.shape == x.shape and q.dtype == torch.float32
