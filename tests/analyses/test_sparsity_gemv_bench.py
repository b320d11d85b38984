"""GEMV benchmark: one row per projection, sparsity and kernel, with the ideal line."""

from __future__ import annotations

from tests._models import get_model

from actscope.analyses.sparsity import gemv_benchmark


def test_gemv_table_shape_and_ideal_line() -> None:
    lm = get_model("tiny:llama")
    res = gemv_benchmark(
        lm,
        sparsities=(0.5,),
        dtypes=("fp32",),
        kernels=("bag",),
        kinds=("q", "up"),
        repeats=2,
        warmup=1,
    )
    t = res.table
    assert set(zip(t.linear, t.kernel, strict=True)) == {
        ("q", "bag"),
        ("up", "bag"),
        ("up", "rows"),
    }
    assert (t.ideal_us == t.dense_us * 0.5).all()
    assert (t.sparse_us == t.kernel_us + t.select_us).all()
    assert res.info["torch_threads"] == 1 and (t.layers == 2).all()
