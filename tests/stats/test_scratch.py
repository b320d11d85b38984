"""Tests of actscope.stats.scratch: buffers are reused per role and grow on demand."""

from __future__ import annotations

import torch

from actscope.stats import scratch


def test_buffer_reused_and_grown() -> None:
    cpu = torch.device("cpu")
    a = scratch.buffer("t", (4, 3), torch.float32, cpu)
    b = scratch.buffer("t", (2, 3), torch.float32, cpu)
    assert a.shape == (4, 3) and b.shape == (2, 3)
    assert a.data_ptr() == b.data_ptr()
    c = scratch.buffer("t", (10, 3), torch.float32, cpu)
    assert c.shape == (10, 3)
    other = scratch.buffer("u", (4, 3), torch.float32, cpu)
    assert other.data_ptr() != c.data_ptr()
    assert scratch.buffer("t", (4, 3), torch.int32, cpu).dtype == torch.int32
    scratch.release()
    assert scratch.buffer("t", (1,), torch.float32, cpu).shape == (1,)
