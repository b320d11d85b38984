"""Sparse matrix-vector paths for batch-1 decoding (CPU), and the module swap that uses them.

The GPU path (a Triton or CUDA sparse GEMV) is not implemented: it could not be tested on the
machines this package is developed on. See docs/sparsity.md.
"""

from actscope.kernels.sparse_gemv import (
    KERNELS,
    active_indices,
    bag_gemv,
    gather_gemv,
    gemv_kernel,
    masked_dense,
    row_gemv,
    transpose_weight,
)
from actscope.kernels.sparse_linear import (
    GateObserver,
    MaskBox,
    RowSparseLinear,
    SparseLinear,
    linear_params,
)
from actscope.kernels.swap import swapped_modules

__all__ = [
    "KERNELS",
    "GateObserver",
    "MaskBox",
    "RowSparseLinear",
    "SparseLinear",
    "active_indices",
    "bag_gemv",
    "gather_gemv",
    "gemv_kernel",
    "linear_params",
    "masked_dense",
    "row_gemv",
    "swapped_modules",
    "transpose_weight",
]
